"""The optimizer, built from OptimConfig and the parametrization table.

Everything is an optax piece: the schedule (warmup, then cosine / linear / constant),
global-norm clipping, and AdamW whose weight decay is masked per tensor by the table's
weight-decay scale (0 for norm gains under the standard parametrization).
"""
from __future__ import annotations

import jax
import optax

from jaxlab.config import ModelConfig, OptimConfig
from jaxlab.models import parametrization


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


def make_optimizer(cfg: OptimConfig, model_cfg: ModelConfig,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  def decay_mask(params):
    _, scales = parametrization.optimizer_scales(params, model_cfg)
    bad = {float(s) for s in jax.tree.leaves(scales)} - {0.0, 1.0}
    if bad:
      raise NotImplementedError(f'weight-decay scales {sorted(bad)} need per-tensor decay '
                                'values; only 0/1 masks are wired')
    return jax.tree.map(lambda s: s > 0, scales)

  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
