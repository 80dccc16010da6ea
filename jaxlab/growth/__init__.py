"""Model growth: depth / width operators, multi-level coalescing, timing, growth events.

  grow(params, src, dst, method, **kw)   params of model `src` -> params of model `dst`
  growth_timing(n_params, total_flops)   tokens to train the small model first (Du et al.)

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

from jaxlab.config_types import ModelConfig
from jaxlab.growth.plan import (DEPTH_METHODS, Phase, depth_method_for, phase_index, phases,
                                source_model, width_method_for)
from jaxlab.growth.timing import GROWTH_FACTOR, growth_fraction, growth_timing

METHODS = DEPTH_METHODS + ('split',)

__all__ = ['grow', 'growth_timing', 'growth_fraction', 'GROWTH_FACTOR', 'METHODS', 'Phase',
           'phases', 'phase_index', 'source_model', 'fresh_params', 'new_layers']


def _width_dims(cfg: ModelConfig) -> tuple[int, ...]:
  return (cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.ff_dim, cfg.dim_per_head)


def fresh_params(cfg: ModelConfig, rng) -> dict:
  """A freshly initialised (unboxed) param tree of model `cfg`, from the table's init."""
  from jaxlab.models import Transformer
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
  from jaxlab.growth import depth
  _check_method(method, None)
  if src.n_layers == dst.n_layers and method != 'layers':
    return [False] * dst.n_layers
  return depth.new_layer_mask(depth_method_for(method), src.n_layers, dst.n_layers, layers)


def grow(params, src: ModelConfig, dst: ModelConfig, method: str, *,
         layers: list[int] | tuple[int, ...] | None = None, width_method: str | None = None,
         rng=None, moments: bool = False):
  """Params of model `src` -> params of model `dst` by a growth operator.

  method: the depth operator ('split' grows width only; with a depth change it stacks).
  width_method: 'split' | 'zero' | 'random'; default 'zero' for method 'zero', 'random'
  for 'random', else 'split'. layers: source index per target layer (method 'layers', or
  the copy map of 'zero' / 'random'). rng: for fresh weights ('zero' width, 'random').
  moments=True grows an optimizer-moment tree instead (same maps, new entries zero).
  """
  from jaxlab.growth import depth, width
  _check_method(method, width_method)
  layers = list(layers) if layers else None
  depth_method = depth_method_for(method)
  width_m = width_method or width_method_for(method)
  rng = jax.random.key(0) if rng is None else rng
  rng_width, rng_depth = jax.random.split(rng)
  mid = dataclasses.replace(dst, n_layers=src.n_layers)
  tree = params
  if _width_dims(src) != _width_dims(dst):
    fresh = None
    if width_m in ('zero', 'random') and not moments:
      fresh = fresh_params(mid, rng_width)
    tree = width.grow_width(tree, src, mid, width_m, fresh=fresh, moments=moments)
  else:
    mid = src
  if src.n_layers != dst.n_layers or method == 'layers':
    fresh = fresh_params(dst, rng_depth) if depth_method == 'random' and not moments else None
    tree = depth.grow_depth(tree, mid, dst, depth_method, layers=layers, fresh=fresh,
                            moments=moments)
  return tree
