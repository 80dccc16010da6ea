"""The parametrization table: what each parameter's init std, forward multiplier, learning
rate and weight decay are under 'sp' and 'mup'. Nothing else knows which is in force.

Every parameter is described by its ParamSpec (jaxlab.models.param_spec: role, logical axes,
fan-in dims). Under muP (Tensor Programs V; microsoft/mup 1.0.0's conventions, checked
tensor by tensor in tests/test_parametrization.py) widths are per tensor and come from a
*base model*, as mup's `set_base_shapes(model, base)` does:

  base model  the target ModelConfig at model.base_d_model, with n_heads / head_dim / d_ff
              derived by the rules the target uses (an explicit head_dim is fixed, so the
              head count scales with d_model; else the head count is fixed and the head
              dim scales; an explicit d_ff keeps its ratio to d_model, else LLaMA's rule),
              each overridable (model.base_n_heads / base_head_dim / base_d_ff).
  widths      a tensor's fan-in and fan-out groups (its matrix view, torch's (out, in))
              are "infinite" when their size differs from the base model's; m_in and m_out
              are size / base size (1 when finite); its muP class is
                matrix  both groups infinite (wq, wk, wv, wo, w_gate, w_up, w_down),
                vector  one infinite (embedding, readout, norm gains over d_model),
                fixed   none (e.g. QK-norm gains when the head dim is fixed);
              and its width multiplier m is m_in when the fan-in is infinite, else m_out
              (mup's InfShape.width_mult: the last infinite torch dim).
  init        hidden: std fan_in^-1/2 (variance 1/fan_in); embedding: model.init_std;
              readout (untied head): model.readout_init = 'mup' (default, MuReadout's:
              std constant in width, the base model's fan_in^-1/2 = fan_in^-1/2 sqrt(m)),
              'fan_in' (fan_in^-1/2: initial logits shrink as 1/m instead of 1/sqrt(m);
              a legitimate muP variant but not mup's), or 'zero'; norm gains 1, biases 0;
              model.zero_init_query zero-initialises the query projection.
  multipliers the logits x 1/m (MuReadout; the tied readout too); attention logits x
              sqrt(base head_dim) / head_dim (mup's 1/d_head with a sqrt(base d_head)
              factor, = SP's 1/sqrt(d_head) at the base); 1 elsewhere.
  lr          per optimizer family (Tensor Programs V table 3; mup's MuAdam / MuSGD):
                Adam-like  matrix: lr / m_in;          vector, fixed: lr
                SGD-like   matrix: lr * m_out / m_in;  vector: lr * m;  fixed: lr
              An optimizer of no known family is refused under muP (FAMILIES).
  weight decay  lr-coupled (p <- p - lr (u + wd p)); decayed tensors take
              wd * lr_scale^-e with e = optim.wd_width_exponent: e = 0 constant decay,
              0.5 Fan et al. 2025, 1 keeps lr * wd constant (what MuAdamW and MuSGD do).
              Norm gains and biases are never decayed (Fan et al.'s lambda_1 = 0);
              optim.vector_weight_decay=false leaves the embedding and the readout
              undecayed too (all of Fan et al.'s vector-like tensors).
Under 'sp' the base model is the model itself, so every m is 1, every multiplier and lr
scale is 1 and the attention scale is 1/sqrt(head_dim): muP at its base width is SP
exactly (tested bit for bit, params, logits and an optimizer update).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from jaxlab.config.types import ConfigError, ModelConfig
from jaxlab.models import param_spec
from jaxlab.models.param_spec import ParamSpec

# Optimizer families under muP (mup's docstring: Adam-like optimizers normalise the
# gradient entrywise -- RMSProp, Adagrad, ...; SGD-like ones do not).
FAMILIES = {
    'adam': ('adam', 'adamw', 'adamp', 'adamax', 'adamaxw', 'amsgrad', 'adabelief', 'nadam',
             'nadamw', 'radam', 'lion', 'rmsprop', 'adagrad', 'yogi'),
    'sgd': ('sgd', 'sgdp', 'noisy_sgd'),
}


def family(optimizer: str) -> str | None:
  """'adam' | 'sgd' for an optimizer name, None when its muP scaling is not known."""
  return next((f for f, names in FAMILIES.items() if optimizer in names), None)


@dataclasses.dataclass(frozen=True)
class Widths:
  """A tensor's widths against the base model (see the module doc)."""
  m_in: float
  m_out: float
  inf_in: bool
  inf_out: bool

  @property
  def kind(self) -> str:
    n = self.inf_in + self.inf_out
    return 'matrix' if n == 2 else 'vector' if n == 1 else 'fixed'

  @property
  def m(self) -> float:
    return self.m_in if self.inf_in else self.m_out if self.inf_out else 1.0


@dataclasses.dataclass(frozen=True)
class Parametrization:
  base: Callable[[ModelConfig], ModelConfig]       # cfg -> base model (its own under sp)
  attn_scale: Callable[[ModelConfig, ModelConfig], float]   # (cfg, base) -> q.k scale


def base_model(cfg: ModelConfig) -> ModelConfig:
  """muP's base model (see the module doc); raises ConfigError naming the key when a
  derived base size is not a whole number."""
  d0 = cfg.base_d_model or cfg.d_model
  if d0 == cfg.d_model and not (cfg.base_n_heads or cfg.base_head_dim or cfg.base_d_ff):
    return cfg
  ratio = d0 / cfg.d_model

  def whole(value: float, what: str, key: str) -> int:
    if value < 1 or not float(value).is_integer():
      raise ConfigError(f'the muP base model has {what} = {value:g} (model.base_d_model='
                        f'{d0} with model.d_model={cfg.d_model}); set {key} explicitly')
    return int(value)

  if cfg.base_n_heads:
    h0 = cfg.base_n_heads
  elif cfg.head_dim:           # a fixed head dim: the head count scales with d_model
    h0 = whole(cfg.n_heads * ratio, 'n_heads', 'model.base_n_heads')
  else:                        # a fixed head count: the head dim scales
    h0 = cfg.n_heads
  g0 = whole(h0 * cfg.kv_heads / cfg.n_heads, 'n_kv_heads', 'model.base_n_heads')
  if cfg.base_head_dim:
    k0 = cfg.base_head_dim
  elif cfg.head_dim:
    k0 = cfg.head_dim
  else:
    k0 = whole(d0 / h0, 'head_dim (base_d_model / n_heads)', 'model.base_head_dim')
  if cfg.base_d_ff:
    f0 = cfg.base_d_ff
  elif cfg.d_ff:               # an explicit d_ff keeps its ratio to d_model
    f0 = whole(cfg.d_ff * ratio, 'd_ff', 'model.base_d_ff')
  else:                        # LLaMA's rule at the base width
    f0 = dataclasses.replace(cfg, d_model=d0, d_ff=0).ff_dim
  return dataclasses.replace(cfg, d_model=d0, n_heads=h0, n_kv_heads=g0, head_dim=k0, d_ff=f0,
                             base_d_model=0, base_n_heads=0, base_head_dim=0, base_d_ff=0)


PARAMETRIZATIONS: dict[str, Parametrization] = {
    'sp': Parametrization(base=lambda cfg: cfg,
                          attn_scale=lambda cfg, base: cfg.dim_per_head ** -0.5),
    'mup': Parametrization(base=base_model,
                           attn_scale=lambda cfg, base: base.dim_per_head ** 0.5 /
                           cfg.dim_per_head),
}


def get(cfg: ModelConfig) -> Parametrization:
  try:
    return PARAMETRIZATIONS[cfg.parametrization]
  except KeyError:
    raise ValueError(f'model.parametrization={cfg.parametrization!r} is not known; allowed: '
                     f'{", ".join(map(repr, PARAMETRIZATIONS))}') from None


def widths(cfg: ModelConfig, param: ParamSpec) -> Widths:
  """The tensor's fan-in / fan-out widths against the base model (all 1 under 'sp')."""
  base = get(cfg).base(cfg)
  (fi, fo), (bi, bo) = param.fan_sizes(cfg), param.fan_sizes(base)
  return Widths(m_in=fi / bi, m_out=fo / bo, inf_in=fi != bi, inf_out=fo != bo)


# ------------------------------------------------------------------------------- the table
# Per role: init std (cfg, fan_in, widths) -> std, or a constant init; and the forward
# multiplier (widths) -> float. The lr and decay rules are per muP class and family.

def _readout_std(cfg: ModelConfig, fan_in: int, w: Widths) -> float:
  if cfg.readout_init == 'zero':
    return 0.0
  if cfg.readout_init == 'fan_in':
    return fan_in ** -0.5
  return fan_in ** -0.5 * w.m_in ** 0.5     # 'mup': the base model's fan_in^-1/2


@dataclasses.dataclass(frozen=True)
class Role:
  init_std: Callable[[ModelConfig, int, Widths], float] | None   # None: init_const
  multiplier: Callable[[Widths], float]
  decays: bool
  init_const: float = 0.0


ROLES: dict[str, Role] = {
    'embedding': Role(init_std=lambda cfg, fan_in, w: cfg.init_std, multiplier=lambda w: 1.0,
                      decays=True),
    'hidden': Role(init_std=lambda cfg, fan_in, w: fan_in ** -0.5, multiplier=lambda w: 1.0,
                   decays=True),
    'output': Role(init_std=_readout_std, multiplier=lambda w: 1.0 / w.m, decays=True),
    'norm': Role(init_std=None, init_const=1.0, multiplier=lambda w: 1.0, decays=False),
    'bias': Role(init_std=None, init_const=0.0, multiplier=lambda w: 1.0, decays=False),
}
# family -> muP class -> (lr scale, its reciprocal): the reciprocal, raised to the
# weight-decay exponent e, is the decay's scale (written out, so e = 1 is mup's exact
# product, not a rounded 1 / lr scale).
LR_RULES: dict[str, dict[str, tuple[Callable[[Widths], float], Callable[[Widths], float]]]] = {
    'adam': {'matrix': (lambda w: 1.0 / w.m_in, lambda w: w.m_in),
             'vector': (lambda w: 1.0, lambda w: 1.0),
             'fixed': (lambda w: 1.0, lambda w: 1.0)},
    'sgd': {'matrix': (lambda w: 1.0 / (w.m_in / w.m_out), lambda w: w.m_in / w.m_out),
            'vector': (lambda w: w.m, lambda w: 1.0 / w.m),
            'fixed': (lambda w: 1.0, lambda w: 1.0)},
}


# ------------------------------------------------------------------------- model-side API

def init_std(cfg: ModelConfig, param: ParamSpec, zero: bool = False) -> float:
  """Std of the param's normal init (0.0 for constant- and zero-initialised params)."""
  role = ROLES[param.role]
  if zero or role.init_std is None:
    return 0.0
  return float(role.init_std(cfg, param.fan_sizes(cfg)[0], widths(cfg, param)))


def initializer(cfg: ModelConfig, param: ParamSpec,
                zero: bool = False) -> Callable[..., jax.Array]:
  """A jax initializer `(key, shape, dtype) -> array`; zero=True forces zeros (the model's
  per-param options, e.g. model.zero_init_query)."""
  role = ROLES[param.role]
  if role.init_std is None:
    return jax.nn.initializers.constant(role.init_const)
  std = init_std(cfg, param, zero)
  return jax.nn.initializers.normal(std) if std else jax.nn.initializers.zeros


def multiplier(cfg: ModelConfig, param: ParamSpec, role: str | None = None) -> float:
  """Forward multiplier on the output of `param` (acting in `role`, default its own: the
  tied embedding acts as the 'output' readout)."""
  return float(ROLES[role or param.role].multiplier(widths(cfg, param)))


def attention_scale(cfg: ModelConfig) -> float:
  """Scale on q.k logits (sm_scale of the attention kernel)."""
  p = get(cfg)
  return float(p.attn_scale(cfg, p.base(cfg)))


def effective_multiplier(cfg: ModelConfig, param: ParamSpec) -> float:
  """Every forward factor on the param's product that growth keeps constant by rescaling
  this param: its own multiplier, times what it absorbs (see ParamSpec.absorbs):
  'attention' the q.k logit scale; 'readout' the output role's over the embedding role's
  multiplier at this param's widths (a tied final gain: its d_model is the readout's)."""
  out = multiplier(cfg, param)
  if 'attention' in param.absorbs:
    out *= attention_scale(cfg)
  if 'readout' in param.absorbs:
    out *= multiplier(cfg, param, 'output') / multiplier(cfg, param, 'embedding')
  return out


def growth_ratio(param: ParamSpec, src: ModelConfig, dst: ModelConfig) -> float:
  """Factor on a param copied from model src to model dst that keeps its forward products:
  effective_multiplier(src) / effective_multiplier(dst) (1 under 'sp' unless the head dim
  changes the attention scale, which growth never does)."""
  return effective_multiplier(src, param) / effective_multiplier(dst, param)


# --------------------------------------------------------------------- optimizer-side API

def check_optimizer(cfg: ModelConfig, optimizer: str) -> None:
  """Raises ConfigError when muP has no lr rule for the optimizer's family."""
  if cfg.parametrization == 'mup' and family(optimizer) is None:
    raise ConfigError(
        f'optim.name={optimizer!r} has no muP learning-rate rule: muP scales the lr per '
        f'optimizer family (Adam-like: {", ".join(FAMILIES["adam"])}; SGD-like: '
        f'{", ".join(FAMILIES["sgd"])}); use one of those or model.parametrization=sp')


def optimizer_scales(cfg: ModelConfig, specs: dict, optimizer: str,
                     wd_width_exponent: float = 0.0,
                     vector_decay: bool = True) -> dict[tuple[str, ...], tuple[float, float]]:
  """{param path: (lr scale, weight-decay scale)} for the params `specs` ({path: spec},
  jaxlab.models.schema.specs(cfg)) under `optimizer` (jaxlab.optim.build gives each
  distinct pair its own optax.multi_transform group). vector_decay=False decays the
  hidden matrices only: the embedding and the readout train with lambda_1 = 0 too, as Fan
  et al. 2025 train every vector-like tensor (optim.vector_weight_decay)."""
  check_optimizer(cfg, optimizer)
  rules = LR_RULES[family(optimizer) or 'adam']   # under 'sp' every rule gives 1
  out = {}
  for path, param in specs.items():
    w = widths(cfg, param)
    lr_rule, inverse = rules[w.kind]
    decays = ROLES[param.role].decays and (vector_decay or param.role == 'hidden')
    wd = inverse(w) ** wd_width_exponent if decays else 0.0
    out[path] = (float(lr_rule(w)), float(wd))
  return out


def _check_table():
  missing = set(param_spec.ROLES) - set(ROLES)
  assert not missing, f'the parametrization table lacks roles {missing}'
  assert set(FAMILIES) == set(LR_RULES)


_check_table()
