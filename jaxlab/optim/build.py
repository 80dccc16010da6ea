"""The optimizer, built from OptimConfig and the parametrization table.

Everything is an optax piece, chained in this order:
  add_noise        Gaussian gradient noise (optim.grad_noise_eta > 0), first in the chain;
  clip             global-norm clipping (optim.grad_clip > 0);
  the optimizer    optim.name: adamp / sgdp (jaxlab.optim.adamp), or any optax optimizer
                   by name, given the config's lr schedule and whichever of b1, b2, eps,
                   momentum, nesterov and weight_decay it takes. An optimizer without a
                   weight_decay argument (sgd, adam, ...) gets L2 decay added to its
                   gradient instead (add_decayed_weights first), as torch's SGD / Adam do.
Per-tensor learning rates and weight decays come from the parametrization table
(`parametrization.optimizer_scales`: muP's lr / m on hidden matrices, the weight-decay
width rule m^e, no decay on norm gains): the params are split into groups of equal
(lr scale, wd scale) and `optax.multi_transform` gives each group its own instance of
the optimizer, with lr schedule x lr scale and weight_decay x wd scale. Every optimizer
here acts per tensor, so the groups together are the same optimizer with per-tensor
hyperparameters. Decay stays lr-coupled (AdamW: p <- p - lr (u + wd p)).
AdamP / SGDP project each weight per output channel; their layout comes from the
model's logical axis names (adamp_layout).
"""
from __future__ import annotations

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab.config_types import ModelConfig, OptimConfig
from jaxlab.models import Transformer, parametrization
from jaxlab.optim.adamp import Layout, adamp, sgdp


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


def adamp_layout(model_cfg: ModelConfig):
  """Per-param AdamP / SGDP Layout from the logical axis names: the 'layers' axis holds
  separate weights; the output channels are the last axis, (heads, head_dim) of a q / k /
  v kernel, and the token of the embedding table (vocab, embed) -- one row per token, as
  in torch's nn.Embedding. Vectors (norm gains, per layer) are never projected."""
  return _layouts(_boxed_shapes(model_cfg))


def _layouts(boxed):
  def one(spec):
    names = tuple(spec)
    batch = tuple(i for i, n in enumerate(names) if n == 'layers')
    weight = [i for i in range(len(names)) if i not in batch]
    if len(weight) <= 1:
      return None
    if names[weight[0]] == 'vocab':
      channel = (weight[0],)
    elif names[weight[-1]] == 'kv':
      channel = tuple(i for i in weight if names[i] in ('heads', 'kv_heads', 'kv'))
    else:
      channel = (weight[-1],)
    return Layout(batch, channel)

  specs = nn.get_partition_spec(boxed)
  return jax.tree.map(one, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


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


def param_groups(params, cfg: OptimConfig, model_cfg: ModelConfig):
  """(labels tree, {label: (lr scale, wd scale)}): one group per distinct pair of the
  parametrization table's per-tensor scales, named after the roles it holds."""
  lr, wd = parametrization.optimizer_scales(params, model_cfg, cfg.wd_width_exponent)
  roles = parametrization.param_roles(params)
  pairs = jax.tree.leaves(jax.tree.map(lambda a, b: (a, b), lr, wd),
                          is_leaf=lambda x: isinstance(x, tuple))
  names: dict[tuple, list[str]] = {}
  for pair, role in zip(pairs, jax.tree.leaves(roles)):
    if role not in names.setdefault(pair, []):
      names[pair].append(role)
  label_of = {pair: '+'.join(r for r in parametrization.ROLES if r in rs)
              for pair, rs in names.items()}
  labels = jax.tree.unflatten(jax.tree.structure(roles), [label_of[p] for p in pairs])
  return labels, {label: pair for pair, label in label_of.items()}


def make_optimizer(cfg: OptimConfig, model_cfg: ModelConfig, schedule: optax.Schedule,
                   seed: int = 0) -> optax.GradientTransformation:
  parts = []
  if cfg.grad_noise_eta > 0:
    parts.append(optax.add_noise(cfg.grad_noise_eta, cfg.grad_noise_gamma, key=seed))
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  boxed = _boxed_shapes(model_cfg)
  # Labels on the unboxed tree, a prefix of the boxed params the sharded init passes: each
  # group's MaskedNode then replaces a whole box there, as it does on the unboxed state.
  labels, groups = param_groups(nn.unbox(boxed), cfg, model_cfg)
  layout = None
  if cfg.name in ('adamp', 'sgdp'):
    flat = jax.tree_util.tree_flatten_with_path(
        _layouts(boxed), is_leaf=lambda x: x is None or isinstance(x, Layout))[0]
    by_key = {parametrization.dict_keys(path): lay for path, lay in flat}

    def layout(params):   # one group's params (optax.MaskedNode where another group's)
      return jax.tree_util.tree_map_with_path(
          lambda path, _: by_key[parametrization.dict_keys(path)], params)
  transforms = {label: _optimizer(cfg, _scaled_schedule(schedule, lr_s), cfg.weight_decay * wd_s,
                                  layout)
                for label, (lr_s, wd_s) in groups.items()}
  parts.append(optax.multi_transform(transforms, labels))
  return optax.chain(*parts)


def _boxed_shapes(model_cfg: ModelConfig):
  model = Transformer(model_cfg)
  return jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32))['params'],
                        jax.random.key(0))
