"""The parametrization table: per tensor role -> init, forward multiplier, lr scale, wd scale.

This is the only file that knows which parametrization is in force. The model asks it
for initialisers, multipliers and the attention logit scale; the optimizer asks it for
per-leaf lr / weight-decay scales (``optimizer_scales``). A parametrization is one entry
of ``PARAMETRIZATIONS`` -- a column of the table.

Roles (every param belongs to exactly one, see ``param_roles``):
  'embedding'  token embedding (V, D); also the readout when embeddings are tied
  'hidden'     matrices whose input and output dims both scale with width
               (wq, wk, wv, wo, w_gate, w_up, w_down)
  'output'     the untied readout head (D, V)
  'norm'       RMSNorm gains
  'bias'       biases (the LLaMA decoder has none; a param named 'bias' gets this role)

Each entry is a function so width-dependent rules fit without a rewrite:
  init_std(cfg, fan_in, m) -> std of N(0, std^2); fan_in = product of the tensor's input dims
                         (layer axis excluded): D for wq/wk/wv/w_gate/w_up, H*K for wo,
                         F for w_down, D for the head.
  multiplier(m), lr_scale(m) -> float;  wd_scale(m, e) -> float (e: the weight-decay
                         width exponent, optim.wd_width_exponent)
m is the tensor's width multiplier, ``width_mult(cfg, key)``: always 1 under 'sp'; under
'mup' its fan-in over the base model's fan-in (d_model / base_d_model for wq, wk, wv,
w_gate, w_up and the head; head_dim / base_head_dim for wo; d_ff / base_d_ff for w_down).
Roles with ``init_const`` set are initialised to that constant instead (norm gains, biases).

muP (Tensor Programs V, microsoft/mup conventions; RESEARCH_NOTES.md section 3), for Adam:
  hidden   init std fan_in^-1/2 (variance 1/fan_in), lr / m, weight decay x m^e
  output   init as SP (or zero: model.zero_init_head), logits x 1/m, lr and decay as SP
  others   as SP;  attention logits x sqrt(base_head_dim) / head_dim instead of
           head_dim^-1/2 (equal at the base head dim);  optional zero-init query.
At base width every m is 1 and each entry equals SP's: muP there IS SP (tested).
Weight decay is lr-coupled (AdamW: p <- p - lr (u + wd p)), so the hidden matrices' decay
rate is lr/m * wd * m^e: e = 0 constant wd, 0.5 Fan et al. 2025, 1 keeps lr*wd constant
(microsoft/mup's MuAdamW). Vector-like params (norm gains, biases) get no decay.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from jaxlab.config_types import ModelConfig

ROLES = ('embedding', 'hidden', 'output', 'norm', 'bias')


@dataclasses.dataclass(frozen=True)
class Role:
  init_std: Callable[[ModelConfig, int, float], float]   # (cfg, fan_in, m) -> std
  multiplier: Callable[[float], float]       # m -> forward multiplier
  lr_scale: Callable[[float], float]         # m -> factor on the optimizer's lr
  wd_scale: Callable[[float, float], float]  # (m, e) -> factor on the optimizer's wd
  init_const: float | None = None            # constant init (overrides init_std)


@dataclasses.dataclass(frozen=True)
class Parametrization:
  roles: dict[str, Role]
  width_mult: Callable[[ModelConfig, tuple], float]    # (cfg, param key) -> m
  attn_scale: Callable[[ModelConfig], float]           # cfg -> attention logit scale


def _one(*_):
  return 1.0


def _zero(*_):
  return 0.0


def _fan_in_std(cfg, fan_in, m):
  return fan_in ** -0.5


def _embedding_std(cfg, fan_in, m):
  return cfg.init_std


# ------------------------------------------------------------------------ base widths
def base_dims(cfg: ModelConfig) -> dict[str, float]:
  """The base model's d_model, d_ff and head_dim (muP's base shapes; heads stay fixed)."""
  d = cfg.base_d_model or cfg.d_model
  if cfg.base_head_dim:
    k = cfg.base_head_dim
  else:
    k = cfg.head_dim if cfg.head_dim else d / cfg.n_heads
  return {'d_model': d, 'd_ff': cfg.base_d_ff or cfg.ff_dim * d / cfg.d_model, 'head_dim': k}


def fan_in_ratio(cfg: ModelConfig, key: tuple[str, ...]) -> float:
  """fan-in / base fan-in of the param at `key` (its last two dict keys)."""
  base = base_dims(cfg)
  key = tuple(key[-2:])
  if key == ('attn', 'wo'):
    return cfg.dim_per_head / base['head_dim']
  if key == ('mlp', 'w_down'):
    return cfg.ff_dim / base['d_ff']
  return cfg.d_model / base['d_model']


# ------------------------------------------------------------------------------- the table
# Columns are parametrizations, rows are roles.
_SP_ROLES = {
    'embedding': Role(init_std=_embedding_std, multiplier=_one, lr_scale=_one, wd_scale=_one),
    'hidden': Role(init_std=_fan_in_std, multiplier=_one, lr_scale=_one,
                   wd_scale=lambda m, e: m ** e),
    'output': Role(init_std=_fan_in_std, multiplier=_one, lr_scale=_one, wd_scale=_one),
    'norm': Role(init_std=_zero, init_const=1.0, multiplier=_one, lr_scale=_one,
                 wd_scale=_zero),
    'bias': Role(init_std=_zero, init_const=0.0, multiplier=_one, lr_scale=_one,
                 wd_scale=_zero),
}

PARAMETRIZATIONS: dict[str, Parametrization] = {
    # Standard parametrization: m is always 1.
    'sp': Parametrization(
        roles=_SP_ROLES,
        width_mult=lambda cfg, key: 1.0,
        attn_scale=lambda cfg: cfg.dim_per_head ** -0.5,
    ),
    # Maximal-update parametrization (for Adam).
    'mup': Parametrization(
        roles={**_SP_ROLES,
               'hidden': dataclasses.replace(_SP_ROLES['hidden'], lr_scale=lambda m: 1.0 / m),
               'output': dataclasses.replace(_SP_ROLES['output'],
                                             multiplier=lambda m: 1.0 / m)},
        width_mult=fan_in_ratio,
        attn_scale=lambda cfg: base_dims(cfg)['head_dim'] ** 0.5 / cfg.dim_per_head,
    ),
}


def get(cfg: ModelConfig) -> Parametrization:
  try:
    return PARAMETRIZATIONS[cfg.parametrization]
  except KeyError:
    raise ValueError(f'model.parametrization={cfg.parametrization!r} is not known; allowed: '
                     f'{", ".join(map(repr, PARAMETRIZATIONS))}') from None


def _role(cfg: ModelConfig, role: str) -> Role:
  if role not in ROLES:
    raise ValueError(f'unknown tensor role {role!r}; allowed: {", ".join(map(repr, ROLES))}')
  return get(cfg).roles[role]


# The param key (module, name) each role's width multiplier is read from when the caller
# gives only a role (the forward multipliers: one value per role).
_ROLE_KEY = {'embedding': ('embed', 'embedding'), 'hidden': ('attn', 'wq'),
             'output': ('head', 'kernel'), 'norm': ('final_norm', 'scale'),
             'bias': ('attn', 'bias')}


def width_mult(cfg: ModelConfig, key: tuple[str, ...]) -> float:
  """The width multiplier m of the param at `key` (1 under 'sp')."""
  return float(get(cfg).width_mult(cfg, tuple(key[-2:])))


def _zero_init(cfg: ModelConfig, key: tuple[str, ...]) -> bool:
  key = tuple(key[-2:])
  return ((cfg.zero_init_head and key == ('head', 'kernel'))
          or (cfg.zero_init_query and key == ('attn', 'wq')))


# ------------------------------------------------------------------------- model-side API

def init_std(cfg: ModelConfig, role: str, fan_in: int, key: tuple[str, ...] = ()) -> float:
  """Std of the normal init for `role` (0.0 for constant- and zero-initialised params).
  `key` (module, name) picks the tensor's width multiplier and zero-init options."""
  r = _role(cfg, role)
  key = tuple(key) or _ROLE_KEY[role]
  if r.init_const is not None or _zero_init(cfg, key):
    return 0.0
  return float(r.init_std(cfg, fan_in, width_mult(cfg, key)))


def initializer(cfg: ModelConfig, role: str, fan_in: int,
                key: tuple[str, ...] = ()) -> Callable[..., jax.Array]:
  """A jax initializer `(key, shape, dtype) -> array` for a tensor of `role`."""
  r = _role(cfg, role)
  if r.init_const is not None:
    return jax.nn.initializers.constant(r.init_const)
  if _zero_init(cfg, tuple(key) or _ROLE_KEY[role]):
    return jax.nn.initializers.zeros
  return jax.nn.initializers.normal(init_std(cfg, role, fan_in, key))


def multiplier(cfg: ModelConfig, role: str) -> float:
  """Forward multiplier applied to the output of a tensor of `role`."""
  return float(_role(cfg, role).multiplier(width_mult(cfg, _ROLE_KEY[role])))


def attention_scale(cfg: ModelConfig) -> float:
  """Scale on q.k logits (sm_scale of the attention kernel)."""
  return float(get(cfg).attn_scale(cfg))


# --------------------------------------------------------------------- optimizer-side API
# Path rules: (module name, param name) -> role. Anything else is an error, so a new
# param must be given a role here before it can be trained.
_PATH_ROLES = {
    ('embed', 'embedding'): 'embedding',
    ('head', 'kernel'): 'output',
    ('attn_norm', 'scale'): 'norm',
    ('mlp_norm', 'scale'): 'norm',
    ('final_norm', 'scale'): 'norm',
    ('attn', 'wq'): 'hidden',
    ('attn', 'wk'): 'hidden',
    ('attn', 'wv'): 'hidden',
    ('attn', 'wo'): 'hidden',
    ('mlp', 'w_gate'): 'hidden',
    ('mlp', 'w_up'): 'hidden',
    ('mlp', 'w_down'): 'hidden',
}
_NAME_ROLES = {'bias': 'bias'}     # by param name alone, in any module


def role_of(path: tuple[str, ...]) -> str:
  """Role of the param at `path` (dict keys, e.g. ('layers', 'attn', 'wq'))."""
  key = tuple(path[-2:])
  if key not in _PATH_ROLES and key[-1:] and key[-1] in _NAME_ROLES:
    return _NAME_ROLES[key[-1]]
  if key not in _PATH_ROLES:
    raise ValueError(f'param {"/".join(path)!r} has no role in jaxlab.models.parametrization '
                     f'(known: {", ".join("/".join(k) for k in _PATH_ROLES)})')
  return _PATH_ROLES[key]


def dict_keys(path) -> tuple[str, ...]:
  # Boxed trees (nn.Partitioned) add attribute keys ('.value'); keep only dict keys.
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def param_roles(params: Any) -> Any:
  """Same tree as `params` (boxed or unboxed; with or without the 'params' level) with
  each array replaced by its role string."""
  return jax.tree_util.tree_map_with_path(lambda path, _: role_of(dict_keys(path)), params)


def optimizer_scales(params: Any, cfg: ModelConfig,
                     wd_width_exponent: float = 0.0) -> tuple[Any, Any]:
  """(lr_scale_tree, wd_scale_tree): floats, same tree as `params`.

  Multiply the optimizer's learning rate / weight decay by these per leaf
  (jaxlab.optim.build does it with optax.multi_transform).
  """
  p = get(cfg)

  def lr(path, _):
    key = dict_keys(path)
    return float(p.roles[role_of(key)].lr_scale(width_mult(cfg, key)))

  def wd(path, _):
    key = dict_keys(path)
    return float(p.roles[role_of(key)].wd_scale(width_mult(cfg, key), wd_width_exponent))
  return (jax.tree_util.tree_map_with_path(lr, params),
          jax.tree_util.tree_map_with_path(wd, params))


def _check_table():
  for name, p in PARAMETRIZATIONS.items():
    missing = set(ROLES) - set(p.roles)
    assert not missing, f'parametrization {name!r} lacks roles {missing}'


_check_table()
