"""Width growth of a Transformer param tree: d_model, d_ff, query heads, kv heads.

Every leaf's axes are named by the unit they index (see ``_LEAVES``): l layers, d residual
dims, f MLP hidden units, h query heads, g kv heads, k head dim, v vocab. Growth builds,
per grown unit kind, a map from dst units to src units and applies it to every axis of
that kind, so one table drives all three methods and the moment trees.

Methods (the head dim K, n_layers, vocab and tying are fixed; no size may shrink):
  'split'   Net2Net / bert2BERT. dst unit j copies src unit idx[j]:
              residual  d' -> d' mod D      (needs D' % D == 0: every dim has the same
                                            copy count, so RMSNorm's mean square is kept)
              MLP       f' -> f' mod F
              kv heads  g' -> g' mod G
              q heads   h' = g' gs' + r  ->  (g' mod G) gs + (r mod gs),  gs = H/G
            A query head's src head reads the src kv head that its dst kv head copies,
            so attention outputs are copies. Weights leaving a copied unit (the input
            axes: d of wq/wk/wv/w_gate/w_up/head, f of w_down, h of wo) are divided by
            that unit's copy count c: sum over its c copies of x_u * W_u / c = x_u * W_u.
            kv copies need no division (each query head reads one kv head).
  'zero'    old unit i sits at dst unit i (query heads at g gs' + r, to keep their kv
            head); new units' incoming weights come from `fresh` (so they get gradient),
            everything leaving a new unit or writing into a new residual dim is 0:
            embedding columns, wo and w_down entries outside the old block. New residual
            dims therefore stay exactly 0, and RMSNorm over D' dims sees a mean square
            D/D' times the old one, so the old gains are multiplied by sqrt(D/D'). With
            the same norm_eps this is exact up to eps: y = x / sqrt(ms D/D' + eps), i.e.
            eps acts as eps D'/D; it is exact when dst.norm_eps = src.norm_eps * D / D'.
            New dims' gains are fresh (the table's init, 1) rather than 0 as in the paper:
            with gain 0 and activation 0 a dim would never receive gradient.
  'random'  old entries as in 'zero' (gains unchanged), every new entry from `fresh`;
            not function preserving.
muP: each layer output is y = multiplier(cfg, role) * x @ W (attention logits also times
attention_scale). Copied weights are multiplied by multiplier(src, role) / multiplier(dst,
role), and wq also by attention_scale(src) / attention_scale(dst), so every product is the
src one; fresh entries are already dst-initialised and are not rescaled.
``moments=True``: the tree holds Adam moments; copies use the same maps without division or
rescale, and every new entry is 0.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.config_types import ModelConfig
from jaxlab.models import parametrization as pz

METHODS = ('split', 'zero', 'random')

# (module, param) -> (axis kinds without the layer axis, the input kind divided by copies)
_LEAVES = {
    ('embed', 'embedding'): ('vd', ''),
    ('head', 'kernel'): ('dv', 'd'),
    ('final_norm', 'scale'): ('d', ''),
    ('attn_norm', 'scale'): ('d', ''),
    ('mlp_norm', 'scale'): ('d', ''),
    ('attn', 'wq'): ('dhk', 'd'),
    ('attn', 'wk'): ('dgk', 'd'),
    ('attn', 'wv'): ('dgk', 'd'),
    ('attn', 'wo'): ('hkd', 'h'),
    ('mlp', 'w_gate'): ('df', 'd'),
    ('mlp', 'w_up'): ('df', 'd'),
    ('mlp', 'w_down'): ('fd', 'f'),
}
# Under 'zero', entries of these outside the old block are 0 (they leave a new unit or
# write into a new residual dim); all other new entries are fresh.
_ZERO_FILLED = {('embed', 'embedding'), ('attn', 'wo'), ('mlp', 'w_down')}
_NORMS = {('final_norm', 'scale'), ('attn_norm', 'scale'), ('mlp_norm', 'scale')}


# ------------------------------------------------------------------ shared leaf helpers

def leaf_names(path) -> tuple[str, ...]:
  """Dict keys of a tree path, e.g. ('layers', 'attn', 'wq') (a 'params' level is kept)."""
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def leaf_axes(names: tuple[str, ...]) -> str:
  """Axis kinds of the leaf at `names`, with 'l' first for leaves under 'layers'."""
  key = tuple(names[-2:])
  if key not in _LEAVES:
    raise ValueError(f'param {"/".join(names)!r} is not a Transformer param known to growth '
                     f'(known: {", ".join("/".join(k) for k in _LEAVES)})')
  return ('l' if 'layers' in names[:-2] else '') + _LEAVES[key][0]


def unit_sizes(cfg: ModelConfig) -> dict[str, int]:
  return {'l': cfg.n_layers, 'd': cfg.d_model, 'f': cfg.ff_dim, 'h': cfg.n_heads,
          'g': cfg.kv_heads, 'k': cfg.dim_per_head, 'v': cfg.vocab_size}


def check_shape(names: tuple[str, ...], x: Any, cfg: ModelConfig, what: str) -> None:
  """Raises if leaf `x` at `names` does not have the shape `cfg` gives it."""
  sizes = unit_sizes(cfg)
  want = tuple(sizes[a] for a in leaf_axes(names))
  if tuple(x.shape) != want:
    raise ValueError(f'{what} leaf {"/".join(names)!r} has shape {tuple(x.shape)}; the '
                     f'{what} config expects {want} ({leaf_axes(names)} = '
                     f'{", ".join(f"{a}={sizes[a]}" for a in leaf_axes(names))})')


def mup_ratio(names: tuple[str, ...], src: ModelConfig, dst: ModelConfig) -> float:
  """multiplier(src, role) / multiplier(dst, role), times the attention-scale ratio for wq."""
  role = pz.role_of(names)
  r = pz.multiplier(src, role) / pz.multiplier(dst, role)
  if tuple(names[-2:]) == ('attn', 'wq'):
    r *= pz.attention_scale(src) / pz.attention_scale(dst)
  return r


def scaled(x: jax.Array, r: float) -> jax.Array:
  return x if r == 1.0 else x * jnp.asarray(r, x.dtype)


def map_tree(fn, tree: Any, fresh: Any | None) -> Any:
  """tree_map_with_path of fn(names, x, fresh_x) (fresh_x None when fresh is None)."""
  if fresh is None:
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(leaf_names(p), x, None), tree)
  if jax.tree_util.tree_structure(fresh) != jax.tree_util.tree_structure(tree):
    raise ValueError('fresh must have the same tree structure as the tree being grown '
                     f'(got {jax.tree_util.tree_structure(fresh)} vs '
                     f'{jax.tree_util.tree_structure(tree)})')
  return jax.tree_util.tree_map_with_path(lambda p, x, f: fn(leaf_names(p), x, f), tree, fresh)


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


def split_maps(src: ModelConfig, dst: ModelConfig) -> dict[str, np.ndarray]:
  """For each grown unit kind, the src unit that each dst unit copies ('split')."""
  gs, gs_d = src.n_heads // src.kv_heads, dst.n_heads // dst.kv_heads
  h_d = np.arange(dst.n_heads)
  maps = {'d': np.arange(dst.d_model) % src.d_model,
          'f': np.arange(dst.ff_dim) % src.ff_dim,
          'g': np.arange(dst.kv_heads) % src.kv_heads,
          'h': (h_d // gs_d % src.kv_heads) * gs + (h_d % gs_d) % gs}
  for kind, name in [('d', 'residual dims'), ('f', 'MLP units'), ('g', 'kv heads'),
                     ('h', 'query heads')]:
    _covered(name, maps[kind], unit_sizes(src)[kind])
  return maps


def place_maps(src: ModelConfig, dst: ModelConfig) -> dict[str, np.ndarray]:
  """For 'zero'/'random': the src unit at each dst unit, -1 for new units."""
  def first(n_src, n_dst):
    i = np.arange(n_dst)
    return np.where(i < n_src, i, -1)
  gs, gs_d = src.n_heads // src.kv_heads, dst.n_heads // dst.kv_heads
  h_d = np.arange(dst.n_heads)
  g_d, r_d = h_d // gs_d, h_d % gs_d
  return {'d': first(src.d_model, dst.d_model), 'f': first(src.ff_dim, dst.ff_dim),
          'g': first(src.kv_heads, dst.kv_heads),
          'h': np.where((g_d < src.kv_heads) & (r_d < gs), g_d * gs + r_d, -1)}


def _along(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
  return v.reshape([-1 if a == axis else 1 for a in range(ndim)])


def _gather(x: jax.Array, axes: str, maps: dict[str, np.ndarray]) -> jax.Array:
  for axis, kind in enumerate(axes):
    if kind in maps:
      x = jnp.take(x, np.maximum(maps[kind], 0), axis=axis)
  return x


# ---------------------------------------------------------------------------- growth

def width_stage(src: ModelConfig, dst: ModelConfig) -> ModelConfig:
  """The dst widths at src depth: grow_width(src -> this), then grow_depth(this -> dst)."""
  return dataclasses.replace(dst, n_layers=src.n_layers)


def grow_width(tree: Any, src: ModelConfig, dst: ModelConfig, method: str, *,
               fresh: Any | None = None, moments: bool = False) -> Any:
  """Grows a param (or Adam-moment) tree of `src` widths to `dst` widths (see module doc).

  tree: unboxed params of Transformer(src) (or a moment tree of the same structure).
  fresh: params of Transformer(dst), freshly initialised; needed by 'zero' and 'random'
    for params (not for moments).
  Returns a tree of dst shapes. For 'split' and 'zero' Transformer(dst) on it computes the
  same logits as Transformer(src) on `tree` ('zero': up to norm_eps, see module doc).
  """
  _check_configs(src, dst, method)
  d_grows = dst.d_model != src.d_model
  if not moments:
    if method != 'random' and src.tie_embeddings:
      if d_grows and method == 'split':
        raise ValueError(
            "width growth 'split' of model.d_model cannot keep the function with "
            'model.tie_embeddings=True: the embedding is both the input (its columns must '
            'be copied) and the readout (its rows must be divided); use untied embeddings '
            "or method 'zero'")
      r_in = pz.multiplier(src, 'embedding') / pz.multiplier(dst, 'embedding')
      r_out = pz.multiplier(src, 'output') / pz.multiplier(dst, 'output')
      if not np.isclose(r_in, r_out, rtol=1e-12):
        raise ValueError(
            f'width growth with model.tie_embeddings=True under parametrization '
            f'{dst.parametrization!r}: the embedding multiplier changes by {r_in:g} and the '
            f'output multiplier by {r_out:g}; one tied matrix cannot compensate both')
    if method != 'split' and fresh is None:
      raise ValueError(f"width growth {method!r} needs fresh=<params of Transformer(dst), "
                       'freshly initialised> for the new units')
  if method == 'split':
    maps = split_maps(src, dst)
    counts = {k: np.bincount(v, minlength=unit_sizes(src)[k])[v] for k, v in maps.items()}
  else:
    maps = place_maps(src, dst)
  gain = float(np.sqrt(src.d_model / dst.d_model))

  def grow(names, x, fresh_x):
    check_shape(names, x, src, 'src')
    axes, key = leaf_axes(names), tuple(names[-2:])
    y = _gather(x, axes, maps)
    if method == 'split':
      if not moments:
        cut = _LEAVES[key][1]
        if cut:
          y = y / jnp.asarray(_along(counts[cut], axes.index(cut), y.ndim), y.dtype)
        y = scaled(y, mup_ratio(names, src, dst))
      return y
    old = np.ones((1,) * y.ndim, bool)
    for axis, kind in enumerate(axes):
      if kind in maps:
        old = old & _along(maps[kind] >= 0, axis, y.ndim)
    if moments:
      return jnp.where(old, y, jnp.zeros_like(y))
    check_shape(names, fresh_x, dst, 'fresh (dst)')
    r = mup_ratio(names, src, dst)
    if method == 'zero' and key in _NORMS:
      r *= gain
    new = jnp.zeros_like(y) if method == 'zero' and key in _ZERO_FILLED else fresh_x
    return jnp.where(old, scaled(y, r), new.astype(y.dtype))

  return map_tree(grow, tree, None if moments else fresh)
