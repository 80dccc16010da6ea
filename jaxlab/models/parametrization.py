"""The parametrization table: per tensor role -> init, forward multiplier, lr scale, wd scale.

This is the only file that knows which parametrization is in force. The model asks it
for initialisers, multipliers and the attention logit scale; the optimizer asks it for
per-leaf lr / weight-decay scales (``optimizer_scales``). Adding a parametrization
(e.g. muP) means adding one entry to ``PARAMETRIZATIONS`` -- a new column of the table --
and nothing else.

Roles (every param belongs to exactly one, see ``param_roles``):
  'embedding'  token embedding (V, D); also the readout when embeddings are tied
  'hidden'     matrices whose input and output dims both scale with width
               (wq, wk, wv, wo, w_gate, w_up, w_down)
  'output'     the untied readout head (D, V)
  'norm'       RMSNorm gains

Each entry is a function so width-dependent rules fit without a rewrite:
  init_std(cfg, fan_in, m) -> std of N(0, std^2); fan_in = product of the tensor's input dims
                         (layer axis excluded): D for wq/wk/wv/w_gate/w_up, H*K for wo,
                         F for w_down, D for the head.
  multiplier(m), lr_scale(m), wd_scale(m) -> float
m is the width multiplier (d_model / base d_model; always 1 under 'sp'). Under muP every
hidden fan-in is proportional to m, so rules written in m need no per-tensor fan-in.
Roles with ``init_const`` set are initialised to that constant instead (norm gains).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from jaxlab.config import ModelConfig

ROLES = ('embedding', 'hidden', 'output', 'norm')


@dataclasses.dataclass(frozen=True)
class Role:
  init_std: Callable[[ModelConfig, int, float], float]   # (cfg, fan_in, m) -> std
  multiplier: Callable[[float], float]       # m -> forward multiplier
  lr_scale: Callable[[float], float]         # m -> factor on the optimizer's lr
  wd_scale: Callable[[float], float]         # m -> factor on the optimizer's weight decay
  init_const: float | None = None            # constant init (overrides init_std)


@dataclasses.dataclass(frozen=True)
class Parametrization:
  roles: dict[str, Role]
  width_mult: Callable[[ModelConfig], float]           # cfg -> m
  attn_scale: Callable[[ModelConfig], float]           # cfg -> attention logit scale


def _one(_):
  return 1.0


def _zero(_):
  return 0.0


# ------------------------------------------------------------------------------- the table
# Columns are parametrizations, rows are roles. 'sp': standard parametrization.
PARAMETRIZATIONS: dict[str, Parametrization] = {
    'sp': Parametrization(
        roles={
            'embedding': Role(init_std=lambda cfg, fan_in, m: cfg.init_std,
                              multiplier=_one, lr_scale=_one, wd_scale=_one),
            'hidden': Role(init_std=lambda cfg, fan_in, m: fan_in ** -0.5,
                           multiplier=_one, lr_scale=_one, wd_scale=_one),
            'output': Role(init_std=lambda cfg, fan_in, m: fan_in ** -0.5,
                           multiplier=_one, lr_scale=_one, wd_scale=_one),
            'norm': Role(init_std=lambda cfg, fan_in, m: 0.0, init_const=1.0,
                         multiplier=_one, lr_scale=_one, wd_scale=_zero),
        },
        width_mult=lambda cfg: 1.0,
        attn_scale=lambda cfg: cfg.dim_per_head ** -0.5,
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


# ------------------------------------------------------------------------- model-side API

def init_std(cfg: ModelConfig, role: str, fan_in: int) -> float:
  """Std of the normal init for `role` (0.0 for constant-initialised roles)."""
  r = _role(cfg, role)
  if r.init_const is not None:
    return 0.0
  return float(r.init_std(cfg, fan_in, get(cfg).width_mult(cfg)))


def initializer(cfg: ModelConfig, role: str, fan_in: int) -> Callable[..., jax.Array]:
  """A jax initializer `(key, shape, dtype) -> array` for a tensor of `role`."""
  r = _role(cfg, role)
  if r.init_const is not None:
    return jax.nn.initializers.constant(r.init_const)
  return jax.nn.initializers.normal(init_std(cfg, role, fan_in))


def multiplier(cfg: ModelConfig, role: str) -> float:
  """Forward multiplier applied to the output of a tensor of `role`."""
  return float(_role(cfg, role).multiplier(get(cfg).width_mult(cfg)))


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


def role_of(path: tuple[str, ...]) -> str:
  """Role of the param at `path` (dict keys, e.g. ('layers', 'attn', 'wq'))."""
  key = tuple(path[-2:])
  if key not in _PATH_ROLES:
    raise ValueError(f'param {"/".join(path)!r} has no role in jaxlab.models.parametrization '
                     f'(known: {", ".join("/".join(k) for k in _PATH_ROLES)})')
  return _PATH_ROLES[key]


def _dict_keys(path) -> tuple[str, ...]:
  # Boxed trees (nn.Partitioned) add attribute keys ('.value'); keep only dict keys.
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def param_roles(params: Any) -> Any:
  """Same tree as `params` (boxed or unboxed; with or without the 'params' level) with
  each array replaced by its role string."""
  return jax.tree_util.tree_map_with_path(lambda path, _: role_of(_dict_keys(path)), params)


def optimizer_scales(params: Any, cfg: ModelConfig) -> tuple[Any, Any]:
  """(lr_scale_tree, wd_scale_tree): floats, same tree as `params`.

  Multiply the optimizer's learning rate / weight decay by these per leaf (e.g. with
  optax.multi_transform over `param_roles(params)`, or by scaling updates).
  """
  p = get(cfg)
  m = p.width_mult(cfg)
  roles = param_roles(params)
  lr = jax.tree_util.tree_map(lambda r: float(p.roles[r].lr_scale(m)), roles)
  wd = jax.tree_util.tree_map(lambda r: float(p.roles[r].wd_scale(m)), roles)
  return lr, wd


def _check_table():
  for name, p in PARAMETRIZATIONS.items():
    missing = set(ROLES) - set(p.roles)
    assert not missing, f'parametrization {name!r} lacks roles {missing}'


_check_table()
