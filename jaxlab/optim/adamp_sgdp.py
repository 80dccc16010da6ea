"""AdamP and SGDP (Heo et al., ICLR 2021) as optax transforms.

For a weight followed by a normalisation layer, the loss does not depend on the weight's
scale, so its gradient is orthogonal to it and momentum only grows the norm, which
shrinks the effective step. AdamP / SGDP detect such weights (|cos(grad, weight)| below
delta / sqrt(row length)) and remove the radial component of the update, per output
channel ("row"), and then scale their weight decay by wd_ratio.

Per weight, every step (docs/optimizers.md; reference: clovaai/AdamP, channel axis first there):
  1. test the RAW gradient against the weight: first the channel view (one row per output
     channel; the max |cosine| over rows counts), then the whole-weight view; stop at the
     first view that passes;
  2. where it passes, project the update: u -= p_n * <p_n, u>_row, p_n = p / (|p|_row + eps);
  3. decoupled decay p *= 1 - lr * wd * (wd_ratio if projected else 1) [SGDP: / (1 - momentum)],
     then the step.

Layout. A Flax kernel is (..., in, out): the output channel is the LAST axis. A `Layout`
says which axes index separate weights (a scanned layer axis: each layer's slice is
tested and projected on its own) and which index output channels (e.g. (heads, head_dim)
of a (d, heads, head_dim) attention kernel). `layout` is a pytree of Layout / None (never
projected) matching the params, a callable params -> such a pytree, or None for the
default (channel = last axis, no batch axes). A weight whose slices have ndim <= 1 is never
projected. Everything is jnp reductions inside tree maps, so it jits, and GSPMD makes the
reductions global when a weight is sharded.

Moment storage (optim.moments_dtype): mu_dtype (AdamP's first moment) and accumulator_dtype
(SGDP's buffer), as optax's Adam and SGD name them, store that moment in another dtype
(bfloat16 halves its memory); it is read back into float32, updated and used in float32,
and rounded only for storage. AdamP's second moment stays float32 (as in optax): with
b2 = 0.999 its per-step change is below bfloat16's resolution.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Layout(NamedTuple):
  batch_axes: tuple[int, ...] = ()     # separate weights (e.g. the scanned layer axis)
  channel_axes: tuple[int, ...] = ()   # output channels: one row each


def default_layout(p) -> Layout | None:
  """Channel = the last axis (Flax kernels are (..., in, out)); ndim <= 1: not projected."""
  return Layout((), (p.ndim - 1,)) if p.ndim > 1 else None


def _resolve(layout, params):
  if layout is None:
    return jax.tree.map(default_layout, params)
  return layout(params) if callable(layout) else layout


def _is_layout(x) -> bool:
  return x is None or isinstance(x, Layout)


def _cos_test(g, p, reduce_axes, row_axes, delta, eps):
  """True (shaped like the batch axes, size 1 elsewhere) where max |cos| < delta/sqrt(n)."""
  dot = jnp.sum(g * p, reduce_axes, keepdims=True)
  g_norm = jnp.sqrt(jnp.sum(g * g, reduce_axes, keepdims=True))
  p_norm = jnp.sqrt(jnp.sum(p * p, reduce_axes, keepdims=True))
  cos = jnp.abs(dot) / (jnp.maximum(g_norm, eps) * jnp.maximum(p_norm, eps))
  if row_axes:
    cos = jnp.max(cos, row_axes, keepdims=True)
  row_len = math.prod(p.shape[a] for a in reduce_axes)
  return cos < delta / math.sqrt(row_len)


def _remove_radial(u, p, reduce_axes, eps):
  p_n = p / (jnp.sqrt(jnp.sum(p * p, reduce_axes, keepdims=True)) + eps)
  return u - p_n * jnp.sum(p_n * u, reduce_axes, keepdims=True)


def project(u, g, p, layout: Layout | None, delta: float, eps: float):
  """(projected update, fired) for one weight; fired is shaped like p's batch axes
  (size-1 elsewhere), or a scalar False when the weight is never projected."""
  if layout is None:
    return u, jnp.zeros((), bool)
  weight_axes = tuple(a for a in range(p.ndim) if a not in layout.batch_axes)
  if len(weight_axes) <= 1:
    return u, jnp.zeros((), bool)
  within_row = tuple(a for a in weight_axes if a not in layout.channel_axes)
  channel_pass = _cos_test(g, p, within_row, layout.channel_axes, delta, eps)
  layer_pass = _cos_test(g, p, weight_axes, (), delta, eps)
  u = jnp.where(channel_pass, _remove_radial(u, p, within_row, eps),
                jnp.where(layer_pass, _remove_radial(u, p, weight_axes, eps), u))
  return u, channel_pass | layer_pass


def _project_tree(updates, grads, params, layout, delta, eps):
  """(projected updates, per-leaf fired masks, number of param entries fired)."""
  layouts = _resolve(layout, params)
  out = jax.tree.map(lambda lay, u, g, p: project(u, g, p, lay, delta, eps),
                     layouts, updates, grads, params, is_leaf=_is_layout)
  treedef = jax.tree.structure(updates)
  pairs = treedef.flatten_up_to(out)
  new_updates = treedef.unflatten([u for u, _ in pairs])
  fired = treedef.unflatten([f for _, f in pairs])
  count = sum(jnp.sum(jnp.broadcast_to(f, p.shape).astype(jnp.float32))
              for f, p in zip(jax.tree.leaves(fired), jax.tree.leaves(params)))
  return new_updates, fired, jnp.asarray(count, jnp.float32)


def _zeros(params, dtype):
  """Zeros shaped like params, in dtype (None: each param's own)."""
  return jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype if dtype is None else dtype), params)


def _f32(x):
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _stored(tree, dtype):
  """A moment as stored: rounded to dtype (None: kept)."""
  return tree if dtype is None else jax.tree.map(lambda x: x.astype(dtype), tree)


def _entries(params) -> jax.Array:
  return jnp.asarray(sum(p.size for p in jax.tree.leaves(params)), jnp.float32)


def _decay(updates, params, fired, weight_decay, wd_ratio, scale, mask):
  """updates + weight_decay * scale * (wd_ratio where projected, else 1) * p, masked."""
  if isinstance(weight_decay, (int, float)) and weight_decay == 0:   # an array: a population's
    return updates
  masks = jax.tree.map(lambda _: True, params) if mask is None else (
      mask(params) if callable(mask) else mask)

  def one(u, p, f, m):
    if not m:
      return u
    factor = jnp.where(f, wd_ratio, 1.0)
    return u + (weight_decay * scale) * factor * p
  return jax.tree.map(one, updates, params, fired, masks)


# ---------------------------------------------------------------------------- AdamP

class ScaleByAdamPState(NamedTuple):
  count: jax.Array
  mu: Any
  nu: Any
  fired: jax.Array             # param entries projected at the last step (float32)
  entries: jax.Array           # param entries this transform updates


def scale_by_adamp(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   weight_decay: float = 0.0, delta: float = 0.1, wd_ratio: float = 0.1,
                   nesterov: bool = False, layout=None,
                   mask: Any | Callable | None = None,
                   mu_dtype=None) -> optax.GradientTransformation:
  """AdamP's direction before the learning rate: projected m_hat / (sqrt(v_hat) + eps)
  plus the (projection-scaled) decoupled weight decay; chain with a learning rate.
  mu_dtype: the first moment's storage dtype (None: the params')."""
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init(params):
    return ScaleByAdamPState(count=jnp.zeros((), jnp.int32), mu=_zeros(params, mu_dtype),
                             nu=optax.tree_utils.tree_zeros_like(params),
                             fired=jnp.zeros((), jnp.float32), entries=_entries(params))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError('scale_by_adamp needs params (the projection tests the weights)')
    count = state.count + 1
    # 1 - b**t as -expm1(t ln b): computed as 1 - b**t in float32 it loses ~4 digits
    # for b2 = 0.999 (the reference computes it in double precision).
    t = count.astype(jnp.float32)
    bc1, bc2 = -jnp.expm1(t * math.log(b1)), -jnp.expm1(t * math.log(b2))
    mu = jax.tree.map(lambda m, g: b1 * _f32(m) + (1 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)

    def direction(m, v, g):
      denom = jnp.sqrt(v) / jnp.sqrt(bc2) + eps
      return (b1 * m + (1 - b1) * g) / denom if nesterov else m / denom
    perturb = jax.tree.map(direction, mu, nu, grads)
    perturb, fired, n_fired = _project_tree(perturb, grads, params, layout, delta, eps)
    updates = jax.tree.map(lambda u: u / bc1, perturb)
    updates = _decay(updates, params, fired, weight_decay, wd_ratio, 1.0, mask)
    return updates, ScaleByAdamPState(count, _stored(mu, mu_dtype), nu, n_fired, state.entries)

  return optax.GradientTransformation(init, update)


def adamp(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.0, delta: float = 0.1, wd_ratio: float = 0.1,
          nesterov: bool = False, *, layout=None, mask=None,
          mu_dtype=None) -> optax.GradientTransformation:
  """AdamP; learning_rate may be an optax schedule. mask: pytree / callable of bools,
  which params get weight decay (all by default). mu_dtype: the first moment's storage
  dtype (None: the params')."""
  return optax.chain(
      scale_by_adamp(b1, b2, eps, weight_decay, delta, wd_ratio, nesterov, layout, mask,
                     mu_dtype),
      optax.scale_by_learning_rate(learning_rate))


# ----------------------------------------------------------------------------- SGDP

class SGDPState(NamedTuple):
  momentum: Any
  fired: jax.Array
  entries: jax.Array


def scale_by_sgdp(momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                  nesterov: bool = False, eps: float = 1e-8, delta: float = 0.1,
                  wd_ratio: float = 0.1, layout=None,
                  mask: Any | Callable | None = None,
                  accumulator_dtype=None) -> optax.GradientTransformation:
  """SGDP's direction before the learning rate. The momentum buffer starts at zero; as in
  the reference, without Nesterov the projection is applied to the buffer itself (the
  stored momentum is the projected one). accumulator_dtype: the buffer's storage dtype
  (None: the params')."""
  acc_dtype = None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)
  if not 0 <= momentum < 1:
    raise ValueError(f'sgdp momentum={momentum} must be in [0, 1): its weight decay is '
                     'divided by (1 - momentum)')

  def init(params):
    return SGDPState(momentum=_zeros(params, acc_dtype),
                     fired=jnp.zeros((), jnp.float32), entries=_entries(params))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError('scale_by_sgdp needs params (the projection tests the weights)')
    buf = jax.tree.map(lambda b, g: momentum * _f32(b) + (1 - dampening) * g, state.momentum,
                       grads)
    d_p = jax.tree.map(lambda g, b: g + momentum * b, grads, buf) if nesterov else buf
    d_p, fired, n_fired = _project_tree(d_p, grads, params, layout, delta, eps)
    if not nesterov:
      buf = d_p
    updates = _decay(d_p, params, fired, weight_decay, wd_ratio, 1 / (1 - momentum), mask)
    return updates, SGDPState(_stored(buf, acc_dtype), n_fired, state.entries)

  return optax.GradientTransformation(init, update)


def sgdp(learning_rate, momentum: float = 0.0, dampening: float = 0.0,
         weight_decay: float = 0.0, nesterov: bool = False, eps: float = 1e-8,
         delta: float = 0.1, wd_ratio: float = 0.1, *, layout=None,
         mask=None, accumulator_dtype=None) -> optax.GradientTransformation:
  """SGDP; learning_rate may be an optax schedule. accumulator_dtype: the momentum
  buffer's storage dtype (None: the params')."""
  return optax.chain(
      scale_by_sgdp(momentum, dampening, weight_decay, nesterov, eps, delta, wd_ratio,
                    layout, mask, accumulator_dtype),
      optax.scale_by_learning_rate(learning_rate))


def fired_fraction(opt_state) -> jax.Array | None:
  """The projection-fired share of param entries at the last step, from an optimizer
  state holding AdamP / SGDP transforms (one per param group; None when it holds none)."""
  found = [s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, (ScaleByAdamPState, SGDPState)))
      if isinstance(s, (ScaleByAdamPState, SGDPState))]
  if not found:
    return None
  return sum(s.fired for s in found) / jnp.maximum(sum(s.entries for s in found), 1.0)
