"""When to grow, and by how much (Du et al. 2024, "Stacking Your Transformers").

The paper fits the number of tokens d to train the small model before stacking as

    log10(d) = 0.88 * log10(N) + 163.27 / log10(C) - 5.74

with N the TARGET model's parameter count and C = 6 * N * D its total training FLOPs.
The fit covers 410M..7B params and 10^20..10^23 FLOPs; the 163.27 / log10(C) term grows
quickly as C shrinks, so far below that range the rule asks for more tokens than the
whole budget. Callers must check (``growth_fraction`` does).

The growth factor (target layers / source layers) is fixed at 4: the paper found it
best and reports no fitted formula for it.
"""
from __future__ import annotations

import math

GROWTH_FACTOR = 4


def growth_timing(n_params: float, total_flops: float) -> float:
  """Tokens to train the small model before growing, by the paper's fitted rule."""
  if n_params <= 0:
    raise ValueError(f'n_params={n_params} must be > 0')
  if total_flops <= 10:
    raise ValueError(f'total_flops={total_flops} must be > 10 (the rule divides by log10 C)')
  log_d = 0.88 * math.log10(n_params) + 163.27 / math.log10(total_flops) - 5.74
  return 10.0 ** log_d


def growth_fraction(n_params: float, n_tokens: float) -> float:
  """The rule's growth point as a fraction of a run of n_tokens (C = 6 N D)."""
  return growth_timing(n_params, 6.0 * n_params * n_tokens) / n_tokens
