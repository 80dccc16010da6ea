"""Depth growth of a Transformer param tree: dst layer i is a copy of src layer map[i].

Layer maps (``layer_map``), for n src layers and n' dst layers:
  'stack'       i mod n                      G_stack (Du et al. 2024): 6 -> 24 is
                                             [0..5, 0..5, 0..5, 0..5]
  'interleave'  i * n // n'                  each layer repeated in place: [0,0,0,0,1,1,...]
  'layers'      an explicit index list       SOLAR 32 -> 48: range(0, 24) + range(8, 32);
                                             Yi-style duplication of a middle range
  'zero', 'random'  the `layers` list when given, else the stack map.
A dst layer is "new" when it is not the first occurrence (in dst order) of its src layer.
'zero' sets to 0, in new layers, every param that writes the residual stream (a dim
tagged 'zero' in the parameter schema: attn/wo and mlp/w_down), so each new block adds
0 to the residual stream (x + 0 * f(x) = x) and the network is the src network, provided
the old layers keep their order 0..n-1 (``new_layer_mask`` checks it). 'random' takes new
layers from a freshly initialised dst tree (the blending ramp m f(x) + (1 - m) x lives in
the training loop). Embedding, final norm and head are copied unchanged.
muP: copied leaves are multiplied by parametrization.growth_ratio (1 unless a multiplier
depends on depth).
``moments=True``: the tree holds optimizer moments; copies use the same map without
rescale, and new layers of 'zero' / 'random' are all 0.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

import dataclasses

from jaxlab.config.types import ModelConfig
from jaxlab.growth.width import check_shape, map_tree, scaled
from jaxlab.models import parametrization as pz
from jaxlab.models.schema import ParamSpec

METHODS = ('stack', 'interleave', 'layers', 'zero', 'random')
_WIDTH = ('d_model', 'ff_dim', 'n_heads', 'kv_heads', 'dim_per_head', 'vocab_size',
          'tie_embeddings')


def layer_map(method: str, n_src: int, n_dst: int, layers=None) -> list[int]:
  """For each dst layer, the index of the src layer it copies (see module doc)."""
  if method not in METHODS:
    raise ValueError(f'depth growth method {method!r} is not known; allowed: '
                     f'{", ".join(map(repr, METHODS))}')
  if n_src < 1 or n_dst < 1:
    raise ValueError(f'depth growth needs n_layers >= 1 (src {n_src}, dst {n_dst})')
  if method in ('stack', 'interleave'):
    if layers is not None:
      raise ValueError(f"depth growth {method!r} takes no layers list; use method 'layers' "
                       "(or 'zero' / 'random') to give one")
    if n_dst < n_src:
      raise ValueError(f'depth growth {method!r} cannot shrink n_layers: src {n_src} -> dst '
                       f'{n_dst}; allowed: dst >= src')
  if method == 'interleave':
    return [i * n_src // n_dst for i in range(n_dst)]
  if layers is None:
    if method == 'layers':
      raise ValueError("depth growth 'layers' needs layers=<one src layer index per dst "
                       'layer>, e.g. SOLAR 32 -> 48: list(range(0, 24)) + list(range(8, 32))')
    if n_dst < n_src:
      raise ValueError(f'depth growth {method!r} cannot shrink n_layers: src {n_src} -> dst '
                       f'{n_dst}; allowed: dst >= src (or give a layers list)')
    return [i % n_src for i in range(n_dst)]
  layers = [int(i) for i in layers]
  if len(layers) != n_dst:
    raise ValueError(f'depth growth layers list has {len(layers)} entries; it needs one per '
                     f'dst layer (n_layers={n_dst})')
  bad = [i for i in layers if not 0 <= i < n_src]
  if bad:
    raise ValueError(f'depth growth layers list has indices {bad} outside the src layers; '
                     f'allowed: 0 .. {n_src - 1}')
  return layers


def insert_every(n_src: int, k: int) -> list[int]:
  """LLaMA-Pro's block expansion as a layer map for 'zero': after every k source layers a
  copy of the last of them (new, so 'zero' zeroes its residual writers: the identity).
  32 layers, k = 4 -> 40: [0, 1, 2, 3, 3, 4, 5, 6, 7, 7, ...]."""
  if k < 1 or k > n_src:
    raise ValueError(f'insert_every k={k}: allowed 1 .. n_layers={n_src}')
  out = []
  for i in range(n_src):
    out.append(i)
    if (i + 1) % k == 0:
      out.append(i)
  return out


def new_layer_mask(method: str, n_src: int, n_dst: int, layers=None) -> list[bool]:
  """True for dst layers that are not the first occurrence of their src layer.

  For 'zero' the first occurrences must be src layers 0, 1, ..., n_src - 1 in that order
  (the surviving blocks then compute the src network); otherwise ValueError.
  """
  idx = layer_map(method, n_src, n_dst, layers)
  seen, mask, firsts = set(), [], []
  for i in idx:
    mask.append(i in seen)
    if i not in seen:
      seen.add(i)
      firsts.append(i)
  if method == 'zero' and firsts != list(range(n_src)):
    raise ValueError(
        f"depth growth 'zero' keeps the function only if the first occurrences of the src "
        f'layers are 0, 1, ..., {n_src - 1} in order; the layer map {idx} has them as '
        f'{firsts}')
  return mask


@dataclasses.dataclass(frozen=True)
class DepthPlan:
  """What every leaf of one depth growth needs, computed once (see `plan`)."""
  src: ModelConfig
  dst: ModelConfig
  method: str
  idx: np.ndarray      # src layer per dst layer
  new: np.ndarray      # True for dst layers that are not a first copy


def plan(src: ModelConfig, dst: ModelConfig, method: str, layers=None) -> DepthPlan:
  """Checks that `method` can grow src.n_layers into dst.n_layers; builds the layer map.
  Width fields of src and dst must be equal (grow width first, at src depth: see
  jaxlab.growth.width.width_stage)."""
  diff = [f'{k}: {getattr(src, k)} vs {getattr(dst, k)}' for k in _WIDTH
          if getattr(src, k) != getattr(dst, k)]
  if diff:
    raise ValueError('depth growth needs src and dst of the same width; they differ in '
                     f'{"; ".join(diff)} (grow width first with grow_width)')
  idx = np.asarray(layer_map(method, src.n_layers, dst.n_layers, layers))
  new = np.asarray(new_layer_mask(method, src.n_layers, dst.n_layers, layers))
  return DepthPlan(src, dst, method, idx, new)


def grow_leaf(dp: DepthPlan, param: ParamSpec, x, fresh_x=None, moments: bool = False):
  """One leaf of src depth -> dst depth (see the module doc); fresh_x: the same leaf of a
  freshly initialised Transformer(dst) ('random' params only)."""
  check_shape(param, x, dp.src, 'src')
  r = 1.0 if moments else pz.growth_ratio(param, dp.src, dp.dst)
  if not param.stacked:
    return scaled(x, r)
  y = scaled(jnp.take(x, dp.idx, axis=0), r)
  if dp.method not in ('zero', 'random') or not dp.new.any():
    return y
  mask = dp.new.reshape((-1,) + (1,) * (y.ndim - 1))
  if moments or (dp.method == 'zero' and 'zero' in param.growth):
    return jnp.where(mask, jnp.zeros_like(y), y)
  if dp.method == 'zero':
    return y
  if fresh_x is None:
    raise ValueError("depth growth 'random' needs fresh=<params of Transformer(dst), freshly "
                     'initialised> for the new layers')
  check_shape(param, fresh_x, dp.dst, 'fresh (dst)')
  return jnp.where(mask, fresh_x.astype(y.dtype), y)


def grow_depth(tree: Any, src: ModelConfig, dst: ModelConfig, method: str, *,
               layers=None, fresh: Any | None = None, moments: bool = False) -> Any:
  """Grows a param (or optimizer-moment) tree from src.n_layers to dst.n_layers layers.

  Every leaf under 'layers' is gathered along axis 0 by ``layer_map``; other leaves are
  copied. 'zero': new layers write 0 into the residual stream (exactly function
  preserving). 'random': new layers are taken from `fresh` (Transformer(dst) params,
  freshly initialised; not needed for moments).
  """
  dp = plan(src, dst, method, layers)
  if method == 'random' and not moments and fresh is None:
    raise ValueError("depth growth 'random' needs fresh=<params of Transformer(dst), freshly "
                     'initialised> for the new layers')
  use_fresh = fresh if method == 'random' and not moments else None
  return map_tree(lambda p, x, f: grow_leaf(dp, p, x, f, moments), tree, src, use_fresh)
