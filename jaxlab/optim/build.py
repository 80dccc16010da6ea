"""The optimizer, built from OptimConfig and the parametrization table.

Everything is an optax piece, chained in this order:
  add_noise        Gaussian gradient noise (optim.grad_noise_eta > 0), first in the chain;
  clip             global-norm clipping (optim.grad_clip > 0);
  the optimizer    optim.name: adamp / sgdp (jaxlab.optim.adamp_sgdp), or any optax optimizer
                   by name, given the config's lr schedule and whichever of b1, b2, eps,
                   momentum, nesterov and weight_decay it takes, and optim.moments_dtype as
                   its first moment's storage dtype (moments_dtype_kwargs). An optimizer without a
                   weight_decay argument (sgd, adam, ...) gets L2 decay added to its
                   gradient instead (add_decayed_weights first), as torch's SGD / Adam do.
Per-tensor learning rates and weight decays come from the parametrization table
(`parametrization.optimizer_scales`: muP's per-family lr rules, the weight-decay width
rule, no decay on norm gains): the params are split into groups of equal (lr scale,
wd scale), each with its own label, and `optax.multi_transform` gives each group its own
instance of the optimizer, with lr schedule x lr scale and weight_decay x wd scale.
Every optimizer here acts per tensor, so the groups together are the same optimizer with
per-tensor hyperparameters. Decay stays lr-coupled (AdamW: p <- p - lr (u + wd p)).
AdamP / SGDP project each weight per output channel; their layout comes from the
parameter schema (adamp_layout).
train.trainable (jaxlab.optim.trainable) freezes params: whole frozen params form a
'frozen' group whose transform is optax.set_to_zero() (no state), the trainable rows of a
partly frozen scanned param are the only ones its group's optimizer sees (rows_only), and
the frozen gradients are zeroed before clipping.
"""
from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jaxlab.config.types import ConfigError, ModelConfig, OptimConfig
from jaxlab.models import parametrization, schema
from jaxlab.optim import trainable as trainable_lib
from jaxlab.optim.adamp_sgdp import Layout, adamp, sgdp

FROZEN = 'frozen'


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to cfg.lr over warmup_steps, then to cfg.lr * final_lr_fraction
  at total_steps: cosine or linear over every step after the warmup; wsd (warmup-stable-
  decay: Hu et al. 2024, Hagele et al. 2024) holds cfg.lr until decay_start, then decays
  in decay_shape (linear, cosine or 1-sqrt) over the rest; or constant."""
  warmup = _warmup(cfg, total_steps)
  if cfg.schedule == 'wsd':
    start = decay_start(cfg, total_steps)
    after = [(warmup, optax.constant_schedule(cfg.lr)),
             (start, _decay(cfg, cfg.decay_shape, total_steps - start))]
  elif cfg.schedule == 'constant':
    after = [(warmup, optax.constant_schedule(cfg.lr))]
  else:
    after = [(warmup, _decay(cfg, cfg.schedule, max(total_steps - warmup, 1)))]
  pieces = [(0, optax.linear_schedule(0.0, cfg.lr, warmup))] if warmup else []
  pieces += after
  pieces = [(at, fn) for (at, fn), nxt in zip(pieces, pieces[1:] + [None])
            if nxt is None or nxt[0] > at]   # a piece of no steps is left out
  if len(pieces) == 1:
    return pieces[0][1]
  return optax.join_schedules([fn for _, fn in pieces], [at for at, _ in pieces[1:]])


def _warmup(cfg: OptimConfig, total_steps: int) -> int:
  return min(cfg.warmup_steps, max(total_steps - 1, 0))


def decay_start(cfg: OptimConfig, total_steps: int) -> int:
  """optim.schedule=wsd: the step at which the decay begins (the lr is cfg.lr there and
  lower after it): round(decay_fraction x total_steps) steps before the end (at least
  one), never inside the warmup."""
  decay = max(round(cfg.decay_fraction * total_steps), 1)
  return max(total_steps - decay, _warmup(cfg, total_steps))


def _decay(cfg: OptimConfig, shape: str, steps: int) -> optax.Schedule:
  """cfg.lr at count 0 down to cfg.lr * final_lr_fraction at count `steps`, then flat."""
  end = cfg.lr * cfg.final_lr_fraction
  if shape == 'cosine':
    return optax.cosine_decay_schedule(cfg.lr, steps, alpha=cfg.final_lr_fraction)
  if shape == 'linear':
    return optax.linear_schedule(cfg.lr, end, steps)

  def one_minus_sqrt(count):   # Hagele et al.'s 1 - sqrt(t / steps), here from lr to end
    done = jnp.clip(jnp.asarray(count, jnp.float32) / steps, 0.0, 1.0)
    return end + (cfg.lr - end) * (1.0 - jnp.sqrt(done))
  return one_minus_sqrt


def same_lr_through(cfg: OptimConfig, steps_a: int, steps_b: int) -> tuple[int | None, str]:
  """(s, why): a run of steps_a steps and one of steps_b steps give every step up to s the
  same lr (None: every step), and why says what sets s. constant: every step; wsd: up to
  the earlier of the two decay starts; cosine / linear: no step after the warmup (0).
  A warmup longer than a run is cut to its length (make_schedule), so it sets s to 0."""
  if steps_a == steps_b:
    return None, 'the length is unchanged'
  if cfg.schedule in ('cosine', 'linear'):
    return 0, (f'under optim.schedule={cfg.schedule} the lr of every step after the warmup '
               'depends on train.steps')
  shorter = min(steps_a, steps_b)
  if _warmup(cfg, shorter) != cfg.warmup_steps:
    return 0, (f'optim.warmup_steps={cfg.warmup_steps} does not fit in {shorter} steps, so '
               'the warmup itself depends on train.steps')
  if cfg.schedule == 'constant':
    return None, 'under optim.schedule=constant the lr does not depend on train.steps'
  start, steps = min((decay_start(cfg, steps_a), steps_a), (decay_start(cfg, steps_b), steps_b))
  return start, (f'under optim.schedule=wsd the lr decay of the {steps}-step run begins at '
                 f'step {start}')


def adamp_layout(model_cfg: ModelConfig) -> dict[tuple[str, ...], Layout | None]:
  """Per-param AdamP / SGDP Layout, from the parameter schema: the 'layers' axis holds
  separate weights; the output channels (one row each) are the fan-out dims -- (heads,
  head_dim) of a q / k / v kernel, d_model of wo and w_down, the vocab of the head -- and,
  for the embedding table, the token (its fan-in), one row per token as in torch's
  nn.Embedding. Vectors (norm gains, per layer) are never projected."""
  return {path: _layout(p) for path, p in schema.specs(model_cfg).items()}


def _layout(param: schema.ParamSpec) -> Layout | None:
  if not param.is_matrix:
    return None
  fan_in, fan_out = param.fan_dims()
  batch = tuple(i for i, a in enumerate(param.axes) if a == 'layers')
  return Layout(batch, fan_in if param.role == 'embedding' else fan_out)


# How an optimizer is told its first moment's storage dtype (optax's names; AdamP takes
# mu_dtype, SGDP accumulator_dtype, as optax's Adam and SGD do).
MOMENT_DTYPE_ARGS = ('mu_dtype', 'accumulator_dtype', 'dtype_momentum')


def _factory(name: str):
  return {'adamp': adamp, 'sgdp': sgdp}.get(name) or getattr(optax, name)


def _moment_dtype_arg(factory) -> str | None:
  takes = inspect.signature(factory).parameters
  return next((a for a in MOMENT_DTYPE_ARGS if a in takes), None)


def moments_dtype_kwargs(cfg: OptimConfig) -> dict:
  """{argument: dtype} that stores optim.name's first moment in optim.moments_dtype ({}
  for float32: the params' own); ConfigError for an optimizer that has no such argument.
  The moment is still computed in float32; only its storage changes."""
  if cfg.moments_dtype == 'float32':
    return {}
  arg = _moment_dtype_arg(_factory(cfg.name))
  if arg is None:
    able = ['adamp', 'sgdp'] + sorted(
        n for n in dir(optax) if not n.startswith('_') and n.islower()
        and callable(getattr(optax, n)) and _takes_lr(getattr(optax, n))
        and _moment_dtype_arg(getattr(optax, n)))
    raise ConfigError(f'optim.moments_dtype={cfg.moments_dtype} cannot be honoured by '
                      f'optim.name={cfg.name!r}: it has no setting for its moments\' dtype; '
                      f'optimizers that have one: {", ".join(able)}')
  return {arg: jnp.dtype(cfg.moments_dtype)}


def _takes_lr(fn) -> bool:
  try:
    return 'learning_rate' in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def _optimizer(cfg: OptimConfig, schedule, weight_decay: float, layout):
  moments = moments_dtype_kwargs(cfg)
  if cfg.name == 'adamp':
    return adamp(schedule, cfg.b1, cfg.b2, cfg.eps, weight_decay, cfg.delta, cfg.wd_ratio,
                 cfg.nesterov, layout=layout, **moments)
  if cfg.name == 'sgdp':
    return sgdp(schedule, cfg.momentum, cfg.dampening, weight_decay, cfg.nesterov,
                cfg.eps, cfg.delta, cfg.wd_ratio, layout=layout, **moments)
  factory = getattr(optax, cfg.name)
  takes = inspect.signature(factory).parameters
  given = dict(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, momentum=cfg.momentum, nesterov=cfg.nesterov)
  kwargs = {k: v for k, v in given.items() if k in takes}
  kwargs.update(moments)
  if 'weight_decay' in takes:
    kwargs['weight_decay'] = weight_decay
  tx = factory(schedule, **kwargs)
  # weight_decay is an array inside a population's step (jaxlab.train.population_program)
  if 'weight_decay' not in takes and not (isinstance(weight_decay, (int, float))
                                          and weight_decay <= 0):
    tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
  return tx


def _scaled_schedule(schedule, factor: float):
  return schedule if factor == 1.0 else (lambda step: schedule(step) * factor)


def param_groups(cfg: OptimConfig, model_cfg: ModelConfig):
  """(labels: {param path: label}, {label: (lr scale, wd scale)}): one group per distinct
  pair of the parametrization's per-tensor scales, named after the roles it holds
  ('hidden', 'embedding+output', 'norm', ...); two groups holding the same roles with
  different scales (e.g. muP matrices of different fan-in ratios) get '.1', '.2', ...
  in order of first appearance, so every distinct pair has its own label."""
  scales = parametrization.optimizer_scales(model_cfg, schema.specs(model_cfg), cfg.name,
                                            cfg.wd_width_exponent, cfg.vector_weight_decay)
  roles = {path: p.role for path, p in schema.specs(model_cfg).items()}
  members: dict[tuple, list[str]] = {}
  for path, pair in scales.items():
    if roles[path] not in members.setdefault(pair, []):
      members[pair].append(roles[path])
  label_of, used = {}, {}
  for pair, rs in members.items():
    base = '+'.join(r for r in schema.ROLES if r in rs)
    n = used.get(base, 0)
    used[base] = n + 1
    label_of[pair] = base if n == 0 else f'{base}.{n}'
  labels = {path: label_of[pair] for path, pair in scales.items()}
  return labels, {label: pair for pair, label in label_of.items()}


def make_optimizer(cfg: OptimConfig, model_cfg: ModelConfig, schedule: optax.Schedule,
                   seed: int = 0, trainable: dict | None = None) -> optax.GradientTransformation:
  """trainable: {param path: trainable_lib.ALL | trainable layer rows} (trainable.resolve),
  or None when every param trains."""
  parts = []
  if cfg.grad_noise_eta > 0:
    parts.append(optax.add_noise(cfg.grad_noise_eta, cfg.grad_noise_gamma, key=seed))
  if trainable is not None:
    parts.append(trainable_lib.zero_frozen(trainable))
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  flat_labels, groups = param_groups(cfg, model_cfg)
  partial = {}
  if trainable is not None:
    flat_labels = {p: FROZEN if trainable[p] == () else label for p, label in flat_labels.items()}
    partial = {p: rows for p, rows in trainable.items() if rows not in (trainable_lib.ALL, ())}
  # The labels are a prefix of boxed and unboxed param trees alike (the sharded init
  # passes boxed params): each group's MaskedNode then replaces a whole param.
  labels = traverse_util.unflatten_dict(flat_labels)
  layout = None
  if cfg.name in ('adamp', 'sgdp'):
    by_path = adamp_layout(model_cfg)

    def layout(params):   # one group's params (optax.MaskedNode where another group's)
      return jax.tree_util.tree_map_with_path(
          lambda path, _: by_path[schema.dict_keys(path)], params)
  used = set(flat_labels.values())
  transforms = {label: _optimizer(cfg, _scaled_schedule(schedule, lr_s), cfg.weight_decay * wd_s,
                                  layout)
                for label, (lr_s, wd_s) in groups.items() if label in used}
  if partial:
    transforms = {k: trainable_lib.rows_only(t, partial) for k, t in transforms.items()}
  if FROZEN in used:
    transforms[FROZEN] = optax.set_to_zero()
  parts.append(optax.multi_transform(transforms, labels))
  return optax.chain(*parts)
