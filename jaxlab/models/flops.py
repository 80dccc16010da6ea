"""FLOPs accounting and MFU: the one FLOPs formula, parameter counts, peak FLOP/s per chip.

The one FLOPs formula (Kaplan et al. 2020 / PaLM appendix B, causal attention halved):

  flops_per_token = 6 * N_matmul + 6 * n_layers * seq_len * n_heads * head_dim

N_matmul counts the parameters that take part in a matmul for every token: the
attention projections, the SwiGLU matrices and the output head (tied or not); the
embedding lookup is a gather and norm gains are elementwise, so neither counts. The
factor 6 is 2 (multiply-add) x 3 (forward + backward: two matmuls per forward one).
Attention scores QK^T and the weighted sum AV cost 2 * 2 * T * H * K per token per
layer forward, x3 for the backward, halved for the causal mask: 6 * T * H * K. These
are model FLOPs: recomputation under remat is not counted (as MFU convention asks).
"""
from __future__ import annotations

import jax
import numpy as np

from jaxlab.config.types import ModelConfig
from jaxlab.models import schema


def matmul_params(cfg: ModelConfig) -> int:
  """Params in a matmul for every token, from the parameter schema: the hidden matrices
  and the readout (the untied head, or the tied embedding)."""
  roles = ('hidden', 'output') + (('embedding',) if cfg.tie_embeddings else ())
  return schema.count(cfg, roles)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs (forward + backward) per token of a sequence of `seq_len`."""
  attention = 6 * cfg.n_layers * seq_len * cfg.n_heads * cfg.dim_per_head
  return float(6 * matmul_params(cfg) + attention)


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# Dense bf16 peak FLOP/s per chip, by a substring of jax.Device.device_kind (first match
# wins, so the more specific names come first). Sources: NVIDIA and Google Cloud specs.
PEAK_FLOPS = (
    ('H100 PCIe', 756e12),
    ('H100', 989e12),
    ('H200', 989e12),
    ('A100', 312e12),
    ('TPU v4', 275e12),
    ('TPU v5 lite', 197e12),   # v5e
    ('TPU v5e', 197e12),
    ('TPU v5p', 459e12),
    ('TPU v5', 459e12),
    ('TPU v6 lite', 918e12),   # v6e (Trillium)
    ('TPU v6e', 918e12),
)


def peak_flops_per_device(device_kind: str) -> float | None:
  for name, peak in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def mfu(flops_per_sec: float, device_kind: str, n_devices: int) -> float | None:
  peak = peak_flops_per_device(device_kind)
  if peak is None:
    return None
  return flops_per_sec / (peak * n_devices)
