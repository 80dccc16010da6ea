"""Step Law's published constants and the law itself (Li et al. 2025, "Predictable Scale
Part I", arXiv 2503.04715), without jax: the run's config rules (jaxlab.optim.step_law)
and the fitted hyperparameter laws (jaxlab.scaling.hparams) both read them here.

  lr_opt = 1.79 * N^-0.713 * D^0.307      B_opt = 0.58 * D^0.571 tokens

N non-embedding parameters, D and B in tokens (docs/scaling_rules.md).
"""
from __future__ import annotations

import math

LR_COEF = 1.79
LR_N_EXP = -0.713
LR_D_EXP = 0.307
BATCH_COEF = 0.58
BATCH_D_EXP = 0.571


def steplaw(n_params: float, n_tokens: float) -> tuple[float, float]:
  """(learning_rate, batch_tokens) for `n_params` non-embedding parameters trained on
  `n_tokens` tokens. The batch is in tokens and not rounded: divide by the sequence
  length for sequences (`batch_sequences`)."""
  for name, value in (('n_params', n_params), ('n_tokens', n_tokens)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0):
      raise ValueError(f'steplaw: {name}={value!r} must be a finite number > 0')
  n, d = float(n_params), float(n_tokens)
  return LR_COEF * n ** LR_N_EXP * d ** LR_D_EXP, BATCH_COEF * d ** BATCH_D_EXP
