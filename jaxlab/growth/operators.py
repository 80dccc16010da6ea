"""The growth operators as one call: `grow(params, src, dst, method, **kw)` -> params of
model `dst`, and `grower`, the same map for one leaf (params or optimizer moments).

Methods: 'stack' (G_stack), 'interleave', 'layers' (an index list: SOLAR / Yi up-scaling),
'zero' (new blocks / units start as the identity), 'random' (fresh new layers / units),
'split' (function-preserving width growth). Depth and width may grow together: width
first (at the source depth), then depth.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.config.types import ModelConfig
from jaxlab.growth import depth, width
from jaxlab.growth.plan import DEPTH_METHODS, depth_method_for, width_method_for
from jaxlab.models import schema
from jaxlab.models.transformer import Transformer

METHODS = DEPTH_METHODS + ('split',)


def _width_dims(cfg: ModelConfig) -> tuple[int, ...]:
  return (cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.ff_dim, cfg.dim_per_head)


def fresh_params(cfg: ModelConfig, rng) -> dict:
  """A freshly initialised (unboxed) param tree of model `cfg`, from the table's init."""
  variables = Transformer(cfg).init(rng, jnp.zeros((1, 1), jnp.int32))
  return nn.unbox(variables['params'])


def _check_method(method: str, width_method: str | None):
  if method not in METHODS:
    raise ValueError(f'growth method {method!r} is not known; allowed: '
                     f'{", ".join(map(repr, METHODS))}')
  if width_method not in (None, 'split', 'zero', 'random'):
    raise ValueError(f"width_method={width_method!r}; allowed: 'split', 'zero', 'random'")


def new_layers(src: ModelConfig, dst: ModelConfig, method: str,
               layers: list[int] | None = None) -> list[bool]:
  """Which target layers are new (not the first copy of a source layer)."""
  _check_method(method, None)
  if src.n_layers == dst.n_layers and method != 'layers':
    return [False] * dst.n_layers
  return depth.new_layer_mask(depth_method_for(method), src.n_layers, dst.n_layers, layers)


def grower(src: ModelConfig, dst: ModelConfig, method: str, *,
           layers: list[int] | tuple[int, ...] | None = None, width_method: str | None = None,
           moments: bool = False):
  """fn(spec, leaf, fresh_mid=None, fresh_dst=None) -> grown leaf: one param (or, with
  moments=True, one optimizer moment) of model `src` -> model `dst` (see `grow`). All
  checks run here, once; the returned function only maps a leaf, so params and every
  moment of an optimizer state go through the same operator
  (jaxlab.models.schema.map_params / map_moments)."""
  _check_method(method, width_method)
  layers = list(layers) if layers else None
  width_m = width_method or width_method_for(method)
  mid = dataclasses.replace(dst, n_layers=src.n_layers)
  wp = width.plan(src, mid, width_m, moments) if _width_dims(src) != _width_dims(dst) else None
  mid = mid if wp else src
  dp = None
  if src.n_layers != dst.n_layers or method == 'layers':
    dp = depth.plan(mid, dst, depth_method_for(method), layers)

  def grow_one(param, x, fresh_mid=None, fresh_dst=None):
    if wp is not None:
      x = width.grow_leaf(wp, param, x, fresh_mid, moments)
    if dp is not None:
      x = depth.grow_leaf(dp, param, x, fresh_dst, moments)
    return x
  grow_one.needs_fresh = (not moments and wp is not None and wp.method != 'split',
                          not moments and dp is not None and dp.method == 'random')
  grow_one.mid = mid
  return grow_one


def grow(params, src: ModelConfig, dst: ModelConfig, method: str, *,
         layers: list[int] | tuple[int, ...] | None = None, width_method: str | None = None,
         rng=None, moments: bool = False):
  """Params of model `src` -> params of model `dst` by a growth operator.

  method: the depth operator ('split' grows width only; with a depth change it stacks).
  width_method: 'split' | 'zero' | 'random'; default 'zero' for method 'zero', 'random'
  for 'random', else 'split'. layers: source index per target layer (method 'layers', or
  the copy map of 'zero' / 'random'). rng: for fresh weights ('zero' width, 'random').
  moments=True grows an optimizer-moment tree instead (same maps, new entries zero).
  Depth and width may grow together: width first (at the source depth), then depth.
  """
  fn = grower(src, dst, method, layers=layers, width_method=width_method, moments=moments)
  rng = jax.random.key(0) if rng is None else rng
  rng_width, rng_depth = jax.random.split(rng)
  need_mid, need_dst = fn.needs_fresh
  fresh_mid = fresh_params(fn.mid, rng_width) if need_mid else None
  fresh_dst = fresh_params(dst, rng_depth) if need_dst else None
  if fresh_mid is None and fresh_dst is None:
    return schema.map_params(fn, params, src)
  # Unused fresh slots are filled with `params` itself (same tree structure), ignored.
  return schema.map_params(
      lambda p, x, fm, fd: fn(p, x, fm if need_mid else None, fd if need_dst else None),
      params, src, params if fresh_mid is None else fresh_mid,
      params if fresh_dst is None else fresh_dst)
