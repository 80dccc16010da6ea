"""tokamax's attention kernels as a jaxlab attention backend (model.attention=tokamax).

tokamax (pip `tokamax`, in jaxlab's [gpu] extra) is the kernel library JAX points to now
that Pallas' Triton lowering is deprecated: `tokamax.dot_product_attention` runs a Mosaic
GPU kernel on Hopper / Blackwell (FlashAttention-3's design: two compute warpgroups and
one TMA warpgroup), a Pallas Triton kernel on other GPUs, cuDNN, or plain XLA.

Masks without a TxS array. tokamax's public function takes a dense mask or one length per
row (one document per row); its implementations take a `Mask` whose per-query key range
[k_start, k_end) their Mosaic GPU and Triton kernels use to bound and skip key blocks.
Packed documents are contiguous runs of one segment id, so a query in the run
[start, end) sees exactly the keys start <= s < end (and s <= t when causal): one BxT
int array, never a BxTxS mask. The public function (tokamax 0.0.12) does not forward a
k_start, so this module calls tokamax's implementations with that Mask itself, as the
public function does with the masks it builds. This is the one place jaxlab reaches into
tokamax's internals (`tokamax._src.ops.attention`); tests/test_tokamax.py checks the
result against jaxlab's reference, so a tokamax release that moves them fails there.

Segment ids are read as runs: an id reused by two separate runs of a row means two
documents here (as for the model's positions, which restart at every change of id),
where `reference_attention` would let the runs see each other. jaxlab's packer never
reuses an id within a row. A (q_ids, kv_ids) pair (cross-attention) is not supported.

Which implementation: per platform, the first of IMPLEMENTATIONS[platform] whose forward
and backward both trace without NotImplementedError -- tokamax's own rule for a list of
implementations, applied to the backward too (tokamax decides the forward alone, and a
backward that then refuses would fail the step). Mosaic GPU refuses float32 at default
precision, so a float32 model runs the Triton kernel (TF32 dots) on a GPU. The choice
depends only on shapes, dtypes, masks and the device, is cached, and is logged once.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
from typing import Any

import jax
import jax.numpy as jnp

# Tried in order (tokamax's names); 'xla' materialises the TxS logits, like jaxlab's own
# reference, and is the last resort.
IMPLEMENTATIONS = {'gpu': ('mosaic_gpu', 'triton', 'xla'), 'cpu': ('xla',)}
FUSED = ('mosaic_gpu', 'triton')     # what makes tokamax worth preferring under `auto`
_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
_log = logging.getLogger('jaxlab.kernels')


def installed() -> bool:
  return importlib.util.find_spec('tokamax') is not None


def _tokamax():
  """(tokamax's implementations by name, its Mask class); imported on first use (the
  import takes seconds and is only needed when this backend runs)."""
  from absl import flags
  from tokamax._src.ops.attention import api, base   # see the module docstring
  # tokamax reads its options through absl flags and, when nobody parsed them, parses
  # sys.argv itself -- which fails on any --option of the program it runs in
  # (`device_check.py --out`, `pytest -q`). Unparsed flags mean defaults: say so.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return api.IMPLEMENTATIONS, base.Mask


def key_ranges(segment_ids_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(k_start_BxT, k_end_BxT): the run of equal ids holding each position, [start, end)."""
  B, T = segment_ids_BxT.shape
  t_T = jnp.arange(T, dtype=jnp.int32)
  change_BxTm1 = segment_ids_BxT[:, 1:] != segment_ids_BxT[:, :-1]
  starts_BxT = jnp.concatenate([jnp.ones((B, 1), bool), change_BxTm1], axis=1)
  ends_BxT = jnp.concatenate([change_BxTm1, jnp.ones((B, 1), bool)], axis=1)
  k_start_BxT = jax.lax.cummax(jnp.where(starts_BxT, t_T, 0), axis=1)
  k_end_BxT = jax.lax.cummin(jnp.where(ends_BxT, t_T + 1, T), axis=1, reverse=True)
  return k_start_BxT, k_end_BxT


def _mask(Mask, causal: bool, segment_ids_BxT):
  if segment_ids_BxT is None:
    return Mask(is_causal=causal)
  k_start_BxT, k_end_BxT = key_ranges(segment_ids_BxT)
  if causal:   # causal bounds the end already; leaving k_end out keeps the causal fast path
    return Mask(k_start=k_start_BxT[:, None, :], is_causal=True)
  return Mask(k_start=k_start_BxT[:, None, :], k_end=k_end_BxT[:, None, :])


def _run(name: str, q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal, segment_ids_BxT, sm_scale):
  impls, Mask = _tokamax()
  return impls[name](q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask=_mask(Mask, causal, segment_ids_BxT),
                     logits_scale=sm_scale, precision=None)


@functools.lru_cache(maxsize=256)
def _choose(platform: str, q_shape, k_shape, dtype, causal: bool, segmented: bool,
            precision) -> tuple[str | None, tuple[str, ...]]:
  """(first implementation whose forward and backward trace, reasons the earlier ones
  gave). precision (jax_default_matmul_precision) is part of the key: it decides
  whether Mosaic GPU takes float32. The scale cannot matter and is left out."""
  del precision
  q = jax.ShapeDtypeStruct(q_shape, dtype)
  k = jax.ShapeDtypeStruct(k_shape, dtype)
  seg = jax.ShapeDtypeStruct(q_shape[:2], jnp.int32) if segmented else None
  reasons = []
  for name in IMPLEMENTATIONS.get(platform, ()):
    def fwd_bwd(q, k, v, seg, name=name):
      out, vjp = jax.vjp(lambda q, k, v: _run(name, q, k, v, causal, seg, 1.0), q, k, v)
      return vjp(out)
    try:
      jax.eval_shape(fwd_bwd, q, k, k, seg)
    except NotImplementedError as err:
      reasons.append(f'{name}: {" ".join(str(err).split())[:160]}')
      continue
    return name, tuple(reasons)
  return None, tuple(reasons)


def choose(q_BxTxHxK, k_BxSxGxK, *, causal: bool, segment_ids: Any,
           platform: str) -> tuple[str | None, str]:
  """(tokamax implementation for this call or None, why), from static information."""
  if not installed():
    return None, "tokamax is not installed (pip install 'jaxlab[gpu]' or tokamax)"
  if platform not in IMPLEMENTATIONS:
    return None, (f'the tokamax backend is wired for GPUs (and its xla implementation on '
                  f'the CPU), not {platform}')
  if isinstance(segment_ids, (tuple, list)):
    return None, 'separate (q_ids, kv_ids) segment ids (cross-attention) are not supported'
  if q_BxTxHxK.dtype not in _DTYPES:
    return None, f'dtype {q_BxTxHxK.dtype} (allowed: float32, bfloat16, float16)'
  if q_BxTxHxK.shape[2] % k_BxSxGxK.shape[2]:
    return None, (f'query heads H={q_BxTxHxK.shape[2]} must be a multiple of kv heads '
                  f'G={k_BxSxGxK.shape[2]}')
  if segment_ids is not None and q_BxTxHxK.shape[1] != k_BxSxGxK.shape[1]:
    return None, 'one segment_ids array needs self-attention (T == S)'
  name, reasons = _choose(platform, tuple(q_BxTxHxK.shape), tuple(k_BxSxGxK.shape),
                          jnp.dtype(q_BxTxHxK.dtype), bool(causal), segment_ids is not None,
                          jax.config.jax_default_matmul_precision)
  if name is None:
    return None, 'no tokamax implementation accepts this call: ' + '; '.join(reasons)
  why = f'tokamax {name} on {platform}' + (f' ({"; ".join(reasons)})' if reasons else '')
  return name, why


def unsupported(q_BxTxHxK, k_BxSxGxK, *, causal: bool, segment_ids: Any, platform: str,
                fused_only: bool = False):
  """Why the tokamax backend cannot run this call (None when it can). fused_only: also
  refuse when only tokamax's xla implementation would take it (what `auto` asks: XLA's
  einsums are jaxlab's own 'xla' backend already)."""
  name, why = choose(q_BxTxHxK, k_BxSxGxK, causal=causal, segment_ids=segment_ids,
                     platform=platform)
  if name is None:
    return why
  if fused_only and name not in FUSED:
    return f'no fused tokamax kernel takes this call ({why})'
  return None


_logged: set = set()


def tokamax_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                      causal: bool = True, segment_ids: Any = None,
                      sm_scale: float | None = None, platform: str | None = None) -> jax.Array:
  """Attention by tokamax, with the reference's layouts, masks and scale (BxTxHxK out, in
  q's dtype). platform: the one compiled for (default: jax.default_backend())."""
  platform = platform or jax.default_backend()
  name, why = choose(q_BxTxHxK, k_BxSxGxK, causal=causal, segment_ids=segment_ids,
                     platform=platform)
  if name is None:
    raise ValueError(f"attention implementation 'tokamax' cannot run this call: {why}")
  if why not in _logged:
    _logged.add(why)
    _log.info('attention: %s', why)
  scale = q_BxTxHxK.shape[-1] ** -0.5 if sm_scale is None else sm_scale
  out_BxTxHxK = _run(name, q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal, segment_ids, scale)
  return out_BxTxHxK.astype(q_BxTxHxK.dtype)
