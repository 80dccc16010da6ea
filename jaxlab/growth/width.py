"""Width growth of a Transformer param tree: d_model, d_ff, query heads, kv heads.

Every leaf's dims are named by the parameter schema (jaxlab.models.schema): a logical
axis ('embed' residual dims, 'mlp' hidden units, 'heads' query heads, 'kv_heads' kv
heads; 'kv' head dim, 'vocab' and 'layers' never change here) and a growth tag. Growth
builds, per grown axis, a map from dst units to src units and applies it to every dim of
that axis, so one per-leaf function serves all three methods, params and optimizer
moments alike.

Methods (the head dim K, n_layers, vocab and tying are fixed; no size may shrink):
  'split'   Net2Net / bert2BERT. dst unit j copies src unit idx[j]:
              residual  d' -> d' mod D      (needs D' % D == 0: every dim has the same
                                            copy count, so RMSNorm's mean square is kept)
              MLP       f' -> f' mod F
              kv heads  g' -> g' mod G
              q heads   h' = g' gs' + r  ->  (g' mod G) gs + (r mod gs),  gs = H/G
            A query head's src head reads the src kv head that its dst kv head copies,
            so attention outputs are copies. Weights leaving a copied unit (the dims
            tagged 'split': the input side) are divided by that unit's copy count c: sum
            over its c copies of x_u * W_u / c = x_u * W_u. kv copies need no division
            (each query head reads one kv head).
  'zero'    old unit i sits at dst unit i (query heads at g gs' + r, to keep their kv
            head); new units' incoming weights come from `fresh` (so they get gradient),
            and every new entry of a param that writes the residual stream (a dim tagged
            'zero': embedding columns, wo, w_down) is 0. New residual dims therefore stay
            exactly 0, and an RMSNorm over D' dims sees a mean square D/D' times the old
            one, so the old gains of the norms over d_model are multiplied by sqrt(D/D').
            With the same norm_eps this is exact up to eps: y = x / sqrt(ms D/D' + eps),
            i.e. eps acts as eps D'/D; it is exact when dst.norm_eps = src.norm_eps D/D'.
            New dims' gains are fresh (the table's init, 1) rather than 0 as in the paper:
            with gain 0 and activation 0 a dim would never receive gradient.
  'random'  old entries as in 'zero' (gains unchanged), every new entry from `fresh`;
            not function preserving.
muP: every copied weight is multiplied by jaxlab.models.parametrization.growth_ratio
(its effective multiplier at src over dst, the attention scale included for wq), so
every product is the src one; fresh entries are already dst-initialised.
``moments=True``: the tree holds optimizer moments; copies use the same maps without
division or rescale, and every new entry is 0.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.config.types import ModelConfig
from jaxlab.models import parametrization as pz
from jaxlab.models import schema
from jaxlab.models.schema import ParamSpec

METHODS = ('split', 'zero', 'random')
GROWN = ('embed', 'mlp', 'heads', 'kv_heads')   # the axes width growth maps


# ------------------------------------------------------------------ shared leaf helpers

def check_shape(param: ParamSpec, x: Any, cfg: ModelConfig, what: str) -> None:
  """Raises if leaf `x` does not have the shape `cfg` gives its spec."""
  want = param.shape(cfg)
  if tuple(x.shape) != want:
    dims = ', '.join(f'{a}={schema.axis_size(cfg, a)}' for a in param.axes)
    raise ValueError(f'the {what} leaf has shape {tuple(x.shape)}; the {what} config '
                     f'expects {want} ({dims})')


def scaled(x: jax.Array, r: float) -> jax.Array:
  return x if r == 1.0 else x * jnp.asarray(r, x.dtype)


def map_tree(fn, tree: Any, cfg: ModelConfig, fresh: Any | None) -> Any:
  """schema.map_params of fn(spec, x, fresh_x) (fresh_x None when fresh is None)."""
  if fresh is None:
    return schema.map_params(lambda s, x: fn(s, x, None), tree, cfg)
  if jax.tree_util.tree_structure(fresh) != jax.tree_util.tree_structure(tree):
    raise ValueError('fresh must have the same tree structure as the tree being grown '
                     f'(got {jax.tree_util.tree_structure(fresh)} vs '
                     f'{jax.tree_util.tree_structure(tree)})')
  return schema.map_params(fn, tree, cfg, fresh)


# ------------------------------------------------------------------------- unit maps

def _check_configs(src: ModelConfig, dst: ModelConfig, method: str) -> None:
  if method not in METHODS:
    raise ValueError(f'width growth method {method!r} is not known; allowed: '
                     f'{", ".join(map(repr, METHODS))}')
  for name in ('n_layers', 'vocab_size', 'tie_embeddings'):
    if getattr(src, name) != getattr(dst, name):
      raise ValueError(f'width growth keeps model.{name}: src has {getattr(src, name)}, dst '
                       f'{getattr(dst, name)} (grow depth separately, see grow_depth)')
  if src.dim_per_head != dst.dim_per_head:
    raise ValueError(
        f'width growth keeps the head dim (RoPE frequencies depend on it): src has '
        f'{src.dim_per_head}, dst {dst.dim_per_head}; set model.head_dim explicitly or grow '
        'model.n_heads with model.d_model (head dim = model.head_dim or d_model // n_heads)')
  for key, a, b in [('model.d_model', src.d_model, dst.d_model),
                    ('model.d_ff', src.ff_dim, dst.ff_dim),
                    ('model.n_heads', src.n_heads, dst.n_heads),
                    ('model.n_kv_heads', src.kv_heads, dst.kv_heads)]:
    if b < a:
      raise ValueError(f'width growth cannot shrink {key}: src {a} -> dst {b}; allowed: '
                       f'dst >= src')
  for name, cfg in (('src', src), ('dst', dst)):
    if cfg.n_heads % cfg.kv_heads:
      raise ValueError(f'{name} model.n_heads={cfg.n_heads} is not a multiple of '
                       f'model.n_kv_heads={cfg.kv_heads}')
  if dst.n_heads // dst.kv_heads < src.n_heads // src.kv_heads:
    raise ValueError(
        f'width growth cannot shrink the query group (model.n_heads / model.n_kv_heads): src '
        f'{src.n_heads}/{src.kv_heads}, dst {dst.n_heads}/{dst.kv_heads}; the src heads that '
        'share a kv head must still share one')
  if method == 'split' and dst.d_model % src.d_model:
    raise ValueError(
        f"width growth 'split' needs dst model.d_model={dst.d_model} to be a multiple of src "
        f'model.d_model={src.d_model} (uniform duplication keeps RMSNorm statistics exact)')


def _covered(kind: str, idx: np.ndarray, n_src: int) -> None:
  missing = sorted(set(range(n_src)) - set(idx.tolist()))
  if missing:
    raise ValueError(f'split width growth leaves src {kind} {missing} without a copy')


def _units(cfg: ModelConfig) -> dict[str, int]:
  return {a: schema.axis_size(cfg, a) for a in GROWN}


def split_maps(src: ModelConfig, dst: ModelConfig) -> dict[str, np.ndarray]:
  """For each grown axis, the src unit that each dst unit copies ('split')."""
  gs, gs_d = src.n_heads // src.kv_heads, dst.n_heads // dst.kv_heads
  h_d = np.arange(dst.n_heads)
  maps = {'embed': np.arange(dst.d_model) % src.d_model,
          'mlp': np.arange(dst.ff_dim) % src.ff_dim,
          'kv_heads': np.arange(dst.kv_heads) % src.kv_heads,
          'heads': (h_d // gs_d % src.kv_heads) * gs + (h_d % gs_d) % gs}
  for axis, name in [('embed', 'residual dims'), ('mlp', 'MLP units'), ('kv_heads', 'kv heads'),
                     ('heads', 'query heads')]:
    _covered(name, maps[axis], _units(src)[axis])
  return maps


def place_maps(src: ModelConfig, dst: ModelConfig) -> dict[str, np.ndarray]:
  """For 'zero'/'random': the src unit at each dst unit, -1 for new units."""
  def first(n_src, n_dst):
    i = np.arange(n_dst)
    return np.where(i < n_src, i, -1)
  gs, gs_d = src.n_heads // src.kv_heads, dst.n_heads // dst.kv_heads
  h_d = np.arange(dst.n_heads)
  g_d, r_d = h_d // gs_d, h_d % gs_d
  return {'embed': first(src.d_model, dst.d_model), 'mlp': first(src.ff_dim, dst.ff_dim),
          'kv_heads': first(src.kv_heads, dst.kv_heads),
          'heads': np.where((g_d < src.kv_heads) & (r_d < gs), g_d * gs + r_d, -1)}


def _along(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
  return v.reshape([-1 if a == axis else 1 for a in range(ndim)])


def _gather(x: jax.Array, axes: tuple[str, ...], maps: dict[str, np.ndarray]) -> jax.Array:
  for axis, name in enumerate(axes):
    if name in maps:
      x = jnp.take(x, np.maximum(maps[name], 0), axis=axis)
  return x


# ---------------------------------------------------------------------------- growth

def width_stage(src: ModelConfig, dst: ModelConfig) -> ModelConfig:
  """The dst widths at src depth: grow_width(src -> this), then grow_depth(this -> dst)."""
  return dataclasses.replace(dst, n_layers=src.n_layers)


@dataclasses.dataclass(frozen=True)
class WidthPlan:
  """What every leaf of one width growth needs, computed once (see `plan`)."""
  src: ModelConfig
  dst: ModelConfig
  method: str
  maps: dict           # grown axis -> src unit per dst unit (-1: new, 'zero' / 'random')
  counts: dict         # 'split': grown axis -> copy count of each dst unit's src unit
  gain: float          # 'zero': sqrt(D / D') on the residual norms' old gains


def plan(src: ModelConfig, dst: ModelConfig, method: str, moments: bool = False) -> WidthPlan:
  """Checks that `method` can grow src's widths into dst's and builds the unit maps."""
  _check_configs(src, dst, method)
  if not moments and method != 'random' and src.tie_embeddings:
    if dst.d_model != src.d_model and method == 'split':
      raise ValueError(
          "width growth 'split' of model.d_model cannot keep the function with "
          'model.tie_embeddings=True: the embedding is both the input (its columns must '
          'be copied) and the readout (its rows must be divided); use untied embeddings '
          "or method 'zero'")
    embedding = next(p for p in schema.specs(src).values() if p.role == 'embedding')
    r_in = pz.growth_ratio(embedding, src, dst)
    r_out = pz.multiplier(src, embedding, 'output') / pz.multiplier(dst, embedding, 'output')
    if not np.isclose(r_in, r_out, rtol=1e-12):
      raise ValueError(
          f'width growth with model.tie_embeddings=True under parametrization '
          f'{dst.parametrization!r}: the embedding multiplier changes by {r_in:g} and the '
          f'readout multiplier by {r_out:g}; one tied matrix cannot compensate both')
  counts = {}
  if method == 'split':
    maps = split_maps(src, dst)
    counts = {a: np.bincount(v, minlength=_units(src)[a])[v] for a, v in maps.items()}
  else:
    maps = place_maps(src, dst)
  return WidthPlan(src, dst, method, maps, counts, float(np.sqrt(src.d_model / dst.d_model)))


def grow_leaf(wp: WidthPlan, param: ParamSpec, x: jax.Array, fresh_x: jax.Array | None = None,
              moments: bool = False) -> jax.Array:
  """One leaf of src widths -> dst widths (see the module doc); fresh_x: the same leaf of
  a freshly initialised Transformer(dst) ('zero' / 'random' params only)."""
  check_shape(param, x, wp.src, 'src')
  y = _gather(x, param.axes, wp.maps)
  if wp.method == 'split':
    if moments:
      return y
    for axis, (name, tag) in enumerate(zip(param.axes, param.growth)):
      if tag == 'split' and name in wp.counts:
        y = y / jnp.asarray(_along(wp.counts[name], axis, y.ndim), y.dtype)
    return scaled(y, pz.growth_ratio(param, wp.src, wp.dst))
  old = np.ones((1,) * y.ndim, bool)
  for axis, name in enumerate(param.axes):
    if name in wp.maps:
      old = old & _along(wp.maps[name] >= 0, axis, y.ndim)
  if moments:
    return jnp.where(old, y, jnp.zeros_like(y))
  if fresh_x is None:
    raise ValueError(f"width growth {wp.method!r} needs fresh=<params of Transformer(dst), "
                     'freshly initialised> for the new units')
  check_shape(param, fresh_x, wp.dst, 'fresh (dst)')
  r = pz.growth_ratio(param, wp.src, wp.dst)
  residual_norm = param.role == 'norm' and [param.axes[i] for i in param.weight_dims] == ['embed']
  if wp.method == 'zero' and residual_norm:
    r *= wp.gain
  zero_filled = wp.method == 'zero' and 'zero' in param.growth
  new = jnp.zeros_like(y) if zero_filled else fresh_x
  return jnp.where(old, scaled(y, r), new.astype(y.dtype))


def grow_width(tree: Any, src: ModelConfig, dst: ModelConfig, method: str, *,
               fresh: Any | None = None, moments: bool = False) -> Any:
  """Grows a param (or optimizer-moment) tree of `src` widths to `dst` widths.

  tree: unboxed params of Transformer(src) (or a moment tree of the same structure).
  fresh: params of Transformer(dst), freshly initialised; needed by 'zero' and 'random'
    for params (not for moments).
  Returns a tree of dst shapes. For 'split' and 'zero' Transformer(dst) on it computes the
  same logits as Transformer(src) on `tree` ('zero': up to norm_eps, see module doc).
  """
  wp = plan(src, dst, method, moments)
  if not moments and method != 'split' and fresh is None:
    raise ValueError(f"width growth {method!r} needs fresh=<params of Transformer(dst), "
                     'freshly initialised> for the new units')
  return map_tree(lambda p, x, f: grow_leaf(wp, p, x, f, moments), tree, src,
                  None if moments else fresh)
