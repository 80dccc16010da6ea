"""LLaMA-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention; layers under nn.scan.

Dims: B batch, T sequence, D d_model, H query heads, G kv heads, K head dim, F MLP hidden,
V vocab, L layers. Params are float32 and created with explicit layouts (x @ W with W
shaped (in..., out...)); matmuls run in cfg.dtype; RMSNorm statistics, RoPE and softmax in
float32; logits are float32. Init stds and forward multipliers come only from
jaxlab.models.parametrization.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxlab.config.types import ModelConfig
from jaxlab.kernels.dispatch import attend
from jaxlab.kernels.ring_attention import context_size
from jaxlab.kernels.ring_layout import from_layout, to_layout
from jaxlab.models import param_spec
from jaxlab.models import parametrization as pz
from jaxlab.models.param_spec import spec

_REMAT_POLICIES = {
    'full': jax.checkpoint_policies.nothing_saveable,
    # Saves projection / MLP matmul outputs; recomputes the TxS attention scores (those
    # einsums have batch dims), which would otherwise dominate saved memory.
    'save_dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# ------------------------------------------------------------------- the parameter schema
# Every param, declared once: (logical axis, growth, is fan-in) per dim; see
# jaxlab.models.param_spec. Names in the Hugging Face Llama / Qwen3 layout.
_L = 'model.layers.{layer}.'
WQ = spec('hidden', ('embed', 'split', True), ('heads', 'copy', False), ('kv', 'keep', False),
          hf=_L + 'self_attn.q_proj.weight', norm_input=True, absorbs=('attention',))
WK = spec('hidden', ('embed', 'split', True), ('kv_heads', 'copy', False), ('kv', 'keep', False),
          hf=_L + 'self_attn.k_proj.weight', norm_input=True)
WV = spec('hidden', ('embed', 'split', True), ('kv_heads', 'copy', False), ('kv', 'keep', False),
          hf=_L + 'self_attn.v_proj.weight', norm_input=True)
WO = spec('hidden', ('heads', 'split', True), ('kv', 'keep', True), ('embed', 'zero', False),
          hf=_L + 'self_attn.o_proj.weight')
# Under QK-norm the query's RMSNorm undoes any scale on wq: its gain absorbs the q.k scale.
WQ_QK_NORMED = dataclasses.replace(WQ, absorbs=())
Q_NORM = spec('norm', ('kv', 'keep', False), hf=_L + 'self_attn.q_norm.weight',
              absorbs=('attention',))
K_NORM = spec('norm', ('kv', 'keep', False), hf=_L + 'self_attn.k_norm.weight')
W_GATE = spec('hidden', ('embed', 'split', True), ('mlp', 'copy', False),
              hf=_L + 'mlp.gate_proj.weight', norm_input=True)
W_UP = spec('hidden', ('embed', 'split', True), ('mlp', 'copy', False),
            hf=_L + 'mlp.up_proj.weight', norm_input=True)
W_DOWN = spec('hidden', ('mlp', 'split', True), ('embed', 'zero', False),
              hf=_L + 'mlp.down_proj.weight')
ATTN_NORM = spec('norm', ('embed', 'copy', False), hf=_L + 'input_layernorm.weight')
MLP_NORM = spec('norm', ('embed', 'copy', False), hf=_L + 'post_attention_layernorm.weight')
FINAL_NORM = spec('norm', ('embed', 'copy', False), hf='model.norm.weight')
# With tied embeddings the final gain feeds only the readout (the embedding transposed):
# it is on the readout's input side and absorbs the readout's multiplier changes.
FINAL_NORM_TIED = spec('norm', ('embed', 'split', False), hf='model.norm.weight',
                       absorbs=('readout',))
EMBEDDING = spec('embedding', ('vocab', 'keep', True), ('embed', 'zero', False),
                 hf='model.embed_tokens.weight', hf_layout='table')
HEAD = spec('output', ('embed', 'split', True), ('vocab', 'keep', False), hf='lm_head.weight',
            norm_input=True)


def _param(module: nn.Module, name: str, param: param_spec.ParamSpec, zero: bool = False):
  init = pz.initializer(module.cfg, param, zero=zero)
  return param_spec.declare(module, name, param, init)


def _scaled(y: jax.Array, cfg: ModelConfig, param: param_spec.ParamSpec,
            role: str | None = None) -> jax.Array:
  m = pz.multiplier(cfg, param, role)
  return y if m == 1.0 else y * m


def _constrain(x: jax.Array, *names: str) -> jax.Array:
  return nn.with_logical_constraint(x, names)


def positions_from_segments(segment_ids_BxT: jax.Array) -> jax.Array:
  """Position within the document: restarts at 0 wherever the segment id changes."""
  B, T = segment_ids_BxT.shape
  t_T = jnp.arange(T)
  starts_BxT = jnp.concatenate(
      [jnp.ones((B, 1), bool), segment_ids_BxT[:, 1:] != segment_ids_BxT[:, :-1]], axis=1)
  start_BxT = jax.lax.cummax(jnp.where(starts_BxT, t_T, 0), axis=1)
  return t_T - start_BxT


def rope_frequencies(cfg: ModelConfig, K: int) -> jax.Array:
  """Inverse frequencies theta^(-2i/K), i < K/2 (float32); with model.rope_scaling=llama3,
  Llama 3.1's rescaling (transformers' rope_type 'llama3'): for wavelengths 2 pi / f longer
  than original_max_len / low_freq_factor the frequency is divided by rope_factor, shorter
  than original_max_len / high_freq_factor it is kept, and in between it is interpolated
  by s = (original_max_len / wavelength - low) / (high - low): (1 - s) f / factor + s f."""
  half = K // 2
  inv_freq_Kh = cfg.rope_theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if cfg.rope_scaling == 'none':
    return inv_freq_Kh
  factor, low, high = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
  old_len = cfg.rope_original_max_len
  wavelen_Kh = 2 * jnp.pi / inv_freq_Kh
  long_Kh = wavelen_Kh > old_len / low
  short_Kh = wavelen_Kh < old_len / high
  scaled_Kh = jnp.where(long_Kh, inv_freq_Kh / factor, inv_freq_Kh)
  smooth_Kh = (old_len / wavelen_Kh - low) / (high - low)
  smoothed_Kh = (1 - smooth_Kh) * scaled_Kh / factor + smooth_Kh * scaled_Kh
  return jnp.where(~long_Kh & ~short_Kh, smoothed_Kh, scaled_Kh)


def rope_tables(positions_BxT: jax.Array,
                inv_freq_Kh: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sin_BxTxKh, cos_BxTxKh) of the rotary angles, float32 (inv_freq_Kh: rope_frequencies).
  The model computes them once per step, outside the layer scan, and every layer reuses
  them."""
  angle_BxTxKh = positions_BxT.astype(jnp.float32)[..., None] * inv_freq_Kh
  return jnp.sin(angle_BxTxKh), jnp.cos(angle_BxTxKh)


def apply_rope(x_BxTxNxK: jax.Array, sin_BxTxKh: jax.Array, cos_BxTxKh: jax.Array) -> jax.Array:
  """Rotary embedding (rotate-half layout: pairs (i, i + K/2)), computed in float32."""
  half = x_BxTxNxK.shape[-1] // 2
  sin_BxTx1xKh, cos_BxTx1xKh = sin_BxTxKh[:, :, None, :], cos_BxTxKh[:, :, None, :]
  x_BxTxNxK32 = x_BxTxNxK.astype(jnp.float32)
  x1, x2 = x_BxTxNxK32[..., :half], x_BxTxNxK32[..., half:]
  out = jnp.concatenate([x1 * cos_BxTx1xKh - x2 * sin_BxTx1xKh,
                         x2 * cos_BxTx1xKh + x1 * sin_BxTx1xKh], axis=-1)
  return out.astype(x_BxTxNxK.dtype)


def rope(x_BxTxNxK: jax.Array, positions_BxT: jax.Array, theta: float,
         inv_freq_Kh: jax.Array | None = None) -> jax.Array:
  """Rotary embedding at the given positions (rope_tables + apply_rope), with frequencies
  theta^(-2i/K) unless inv_freq_Kh gives them (rope_frequencies)."""
  if inv_freq_Kh is None:
    half = x_BxTxNxK.shape[-1] // 2
    inv_freq_Kh = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  return apply_rope(x_BxTxNxK, *rope_tables(positions_BxT, inv_freq_Kh))


class RMSNorm(nn.Module):
  cfg: ModelConfig
  declared: param_spec.ParamSpec      # the gain's spec (which norm this is)

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    """Normalises the last axis (D here; the head dim K for QK-norm)."""
    scale_D = _param(self, 'scale', self.declared)
    x32_BxTxD = x_BxTxD.astype(jnp.float32)
    ms_BxTx1 = jnp.mean(jnp.square(x32_BxTxD), axis=-1, keepdims=True)
    y_BxTxD = x32_BxTxD * jax.lax.rsqrt(ms_BxTx1 + self.cfg.norm_eps)
    y_BxTxD = y_BxTxD * _scaled(scale_D, self.cfg, self.declared)
    return y_BxTxD.astype(self.cfg.dtype)


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, rope_BxTxKh, segment_ids_BxT):
    """rope_BxTxKh: the (sin, cos) tables of rope_tables."""
    cfg = self.cfg
    dt = cfg.dtype
    wq_spec = WQ_QK_NORMED if cfg.qk_norm else WQ
    wq_DxHxK = _param(self, 'wq', wq_spec, zero=cfg.zero_init_query)
    wk_DxGxK = _param(self, 'wk', WK)
    wv_DxGxK = _param(self, 'wv', WV)
    wo_HxKxD = _param(self, 'wo', WO)

    x_BxTxD = x_BxTxD.astype(dt)
    q_BxTxHxK = _scaled(jnp.einsum('btd,dhk->bthk', x_BxTxD, wq_DxHxK.astype(dt)), cfg,
                        wq_spec)
    k_BxTxGxK = _scaled(jnp.einsum('btd,dgk->btgk', x_BxTxD, wk_DxGxK.astype(dt)), cfg, WK)
    v_BxTxGxK = _scaled(jnp.einsum('btd,dgk->btgk', x_BxTxD, wv_DxGxK.astype(dt)), cfg, WV)
    if cfg.qk_norm:   # OLMo-2 / Qwen3: RMSNorm over each head's K dims, before RoPE
      q_BxTxHxK = RMSNorm(cfg, Q_NORM, name='q_norm')(q_BxTxHxK)
      k_BxTxGxK = RMSNorm(cfg, K_NORM, name='k_norm')(k_BxTxGxK)
    q_BxTxHxK = _constrain(apply_rope(q_BxTxHxK, *rope_BxTxKh), 'batch', 'seq', 'heads', 'kv')
    k_BxTxGxK = _constrain(apply_rope(k_BxTxGxK, *rope_BxTxKh), 'batch', 'seq', 'kv_heads', 'kv')
    v_BxTxGxK = _constrain(v_BxTxGxK, 'batch', 'seq', 'kv_heads', 'kv')

    # Params do not depend on the attention backend, and init traces the model at shapes
    # a fused kernel may refuse (splash needs T % 128 == 0): init uses the reference.
    impl = 'xla' if self.is_initializing() else cfg.attention
    out_BxTxHxK = attend(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT=segment_ids_BxT,
                         sm_scale=pz.attention_scale(cfg), implementation=impl)
    out_BxTxHxK = _constrain(out_BxTxHxK, 'batch', 'seq', 'heads', 'kv')
    y_BxTxD = jnp.einsum('bthk,hkd->btd', out_BxTxHxK, wo_HxKxD.astype(dt))
    return _scaled(y_BxTxD, cfg, WO)


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD):
    cfg = self.cfg
    dt = cfg.dtype
    w_gate_DxF = _param(self, 'w_gate', W_GATE)
    w_up_DxF = _param(self, 'w_up', W_UP)
    w_down_FxD = _param(self, 'w_down', W_DOWN)

    x_BxTxD = x_BxTxD.astype(dt)
    gate_BxTxF = _scaled(jnp.einsum('btd,df->btf', x_BxTxD, w_gate_DxF.astype(dt)), cfg, W_GATE)
    up_BxTxF = _scaled(jnp.einsum('btd,df->btf', x_BxTxD, w_up_DxF.astype(dt)), cfg, W_UP)
    h_BxTxF = _constrain(nn.silu(gate_BxTxF) * up_BxTxF, 'batch', 'seq', 'mlp')
    y_BxTxD = jnp.einsum('btf,fd->btd', h_BxTxF, w_down_FxD.astype(dt))
    return _scaled(y_BxTxD, cfg, W_DOWN)


class Block(nn.Module):
  """Pre-norm residual block; (carry, out) signature for nn.scan.

  With a gate g (a scalar per layer, used by growth to blend new layers in), the block
  returns g * f(x) + (1 - g) * x: g = 0 is the identity, g = 1 the plain block.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, rope_BxTxKh, segment_ids_BxT, gate=None):
    x_in_BxTxD = x_BxTxD
    h_BxTxD = RMSNorm(self.cfg, ATTN_NORM, name='attn_norm')(x_BxTxD)
    x_BxTxD = x_BxTxD + Attention(self.cfg, name='attn')(h_BxTxD, rope_BxTxKh, segment_ids_BxT)
    x_BxTxD = _constrain(x_BxTxD, 'batch', 'seq', 'embed')
    h_BxTxD = RMSNorm(self.cfg, MLP_NORM, name='mlp_norm')(x_BxTxD)
    x_BxTxD = x_BxTxD + Mlp(self.cfg, name='mlp')(h_BxTxD)
    if gate is not None:
      x_BxTxD = x_in_BxTxD + gate.astype(x_BxTxD.dtype) * (x_BxTxD - x_in_BxTxD)
    x_BxTxD = _constrain(x_BxTxD, 'batch', 'seq', 'embed')
    return x_BxTxD, None


class Embed(nn.Module):
  cfg: ModelConfig

  def setup(self):
    self.embedding_VxD = _param(self, 'embedding', EMBEDDING)

  def __call__(self, tokens_BxT):
    x_BxTxD = jnp.take(self.embedding_VxD, tokens_BxT, axis=0).astype(self.cfg.dtype)
    return _scaled(x_BxTxD, self.cfg, EMBEDDING)

  def attend(self, x_BxTxD):
    """Tied readout: logits from the embedding matrix transposed (float32), times the
    readout multiplier."""
    logits_BxTxV = jnp.einsum('btd,vd->btv', x_BxTxD, self.embedding_VxD.astype(self.cfg.dtype),
                              preferred_element_type=jnp.float32)
    return _scaled(logits_BxTxV, self.cfg, EMBEDDING, 'output')


class Head(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD):
    kernel_DxV = _param(self, 'kernel', HEAD)
    logits_BxTxV = jnp.einsum('btd,dv->btv', x_BxTxD, kernel_DxV.astype(self.cfg.dtype),
                              preferred_element_type=jnp.float32)
    return _scaled(logits_BxTxV, self.cfg, HEAD)


class Transformer(nn.Module):
  """tokens_BxT (int) [, segment_ids_BxT] [, layer_gate_L] -> logits_BxTxV (float32).

  layer_gate_L (optional, one scalar per layer) blends each block with the identity
  (see Block); growth's 'random' method ramps new layers in with it.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxT: jax.Array, segment_ids_BxT: jax.Array | None = None,
               layer_gate_L: jax.Array | None = None):
    cfg = self.cfg
    B, T = tokens_BxT.shape
    n_context = context_size()    # > 1: the sequence is split over mesh.context devices
    if segment_ids_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(T), (B, T))
    else:
      if n_context > 1:   # whole sequences: positions_from_segments scans along T
        segment_ids_BxT = _constrain(segment_ids_BxT, 'batch', None)
      if segment_ids_BxT.shape != tokens_BxT.shape:
        raise ValueError(f'segment_ids_BxT has shape {segment_ids_BxT.shape}; it must match '
                         f'tokens_BxT {tokens_BxT.shape}')
      positions_BxT = positions_from_segments(segment_ids_BxT)

    # mesh.context > 1: tokens go into ring attention's zigzag order (positions and segment
    # ids computed above, in the natural order, travel with them); the residual stream
    # comes back to the natural order before the readout, so callers see no difference.
    # The int arrays stay whole along the sequence (as the host batch arrives) until they
    # are permuted, so positions and the permutation need no communication.
    if n_context > 1:
      whole = lambda a: None if a is None else to_layout(_constrain(a, 'batch', None),
                                                         n_context)
      tokens_BxT, positions_BxT, segment_ids_BxT = (
          whole(a) for a in (tokens_BxT, positions_BxT, segment_ids_BxT))

    embed = Embed(cfg, name='embed')
    x_BxTxD = _constrain(embed(tokens_BxT), 'batch', 'seq', 'embed')

    block = Block
    if cfg.remat != 'none':
      if cfg.remat not in _REMAT_POLICIES:
        raise ValueError(f'model.remat={cfg.remat!r} is not known; allowed: '
                         f"'none', {', '.join(map(repr, _REMAT_POLICIES))}")
      block = nn.remat(Block, prevent_cse=False, policy=_REMAT_POLICIES[cfg.remat])
    gated = layer_gate_L is not None
    if gated and layer_gate_L.shape != (cfg.n_layers,):
      raise ValueError(f'layer_gate_L has shape {layer_gate_L.shape}; it needs one value per '
                       f'layer, ({cfg.n_layers},)')
    in_axes = (nn.broadcast, nn.broadcast) + ((0,) if gated else ())
    # 'intermediates': per-layer captures (capture_intermediates / sow, e.g. the coordinate
    # check) stack along the layer axis instead of being dropped by the scan.
    layers = nn.scan(block, variable_axes={'params': 0, 'intermediates': 0},
                     split_rngs={'params': True},
                     in_axes=in_axes, length=cfg.n_layers,
                     unroll=min(cfg.scan_unroll, cfg.n_layers),
                     metadata_params={nn.PARTITION_NAME: 'layers'})
    # RoPE's sin / cos tables: computed here once, not in every layer.
    rope_BxTxKh = rope_tables(positions_BxT, rope_frequencies(cfg, cfg.dim_per_head))
    args = (rope_BxTxKh, segment_ids_BxT) + ((layer_gate_L,) if gated else ())
    x_BxTxD, _ = layers(cfg, name='layers')(x_BxTxD, *args)

    if n_context > 1:   # gathered whole, permuted back locally, split again
      x_BxTxD = from_layout(_constrain(x_BxTxD, 'batch', None, 'embed'), n_context)
      x_BxTxD = _constrain(x_BxTxD, 'batch', 'seq', 'embed')

    final_norm = FINAL_NORM_TIED if cfg.tie_embeddings else FINAL_NORM
    x_BxTxD = RMSNorm(cfg, final_norm, name='final_norm')(x_BxTxD)
    if cfg.tie_embeddings:
      logits_BxTxV = embed.attend(x_BxTxD)
    else:
      logits_BxTxV = Head(cfg, name='head')(x_BxTxD)
    return _constrain(logits_BxTxV, 'batch', 'seq', 'vocab')
