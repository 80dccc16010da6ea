"""The optimizer, built from OptimConfig and the parametrization table.

Everything is an optax piece, chained in this order:
  add_noise        Gaussian gradient noise (optim.grad_noise_eta > 0), first in the chain;
  clip             global-norm clipping (optim.grad_clip > 0);
  the optimizer    optim.name: adamp / sgdp (jaxlab.optim.adamp_sgdp), or any optax optimizer
                   by name, given the config's lr schedule and whichever of b1, b2, eps,
                   momentum, nesterov and weight_decay it takes. An optimizer without a
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
import optax
from flax import traverse_util

from jaxlab.config.types import ModelConfig, OptimConfig
from jaxlab.models import parametrization, schema
from jaxlab.optim import trainable as trainable_lib
from jaxlab.optim.adamp_sgdp import Layout, adamp, sgdp

FROZEN = 'frozen'


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to cfg.lr over warmup_steps, then decay to
  cfg.lr * final_lr_fraction at total_steps (cosine or linear), or constant."""
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  decay_steps = max(total_steps - warmup, 1)
  end = cfg.lr * cfg.final_lr_fraction
  if cfg.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.final_lr_fraction)
  elif cfg.schedule == 'linear':
    decay = optax.linear_schedule(cfg.lr, end, decay_steps)
  else:
    decay = optax.constant_schedule(cfg.lr)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


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


def _optimizer(cfg: OptimConfig, schedule, weight_decay: float, layout):
  if cfg.name == 'adamp':
    return adamp(schedule, cfg.b1, cfg.b2, cfg.eps, weight_decay, cfg.delta, cfg.wd_ratio,
                 cfg.nesterov, layout=layout)
  if cfg.name == 'sgdp':
    return sgdp(schedule, cfg.momentum, cfg.dampening, weight_decay, cfg.nesterov,
                cfg.eps, cfg.delta, cfg.wd_ratio, layout=layout)
  factory = getattr(optax, cfg.name)
  takes = inspect.signature(factory).parameters
  given = dict(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, momentum=cfg.momentum, nesterov=cfg.nesterov)
  kwargs = {k: v for k, v in given.items() if k in takes}
  if 'weight_decay' in takes:
    kwargs['weight_decay'] = weight_decay
  tx = factory(schedule, **kwargs)
  if 'weight_decay' not in takes and weight_decay > 0:
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
