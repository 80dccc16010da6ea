"""muP hyperparameter transfer (Tensor Programs V; docs/scaling_rules.md): the learning rate
that is best at the narrowest width stays best at every width under muP, and drifts
under the standard parametrization.

  python launch.py sweep mup_transfer              # 2 x 3 widths x 6 lrs x 3 seeds = 108 runs,
                                                    # as 6 populations of 18 (POPULATION)
  python launch.py report runs/mup_transfer         # val loss vs lr, one curve per width,
                                                    # one panel per parametrization; best lr
                                                    # and its shift over seeds
  python launch.py sweep mup_transfer_smoke         # the same study in seconds (tests)

Widths 32..128 (4x) at a fixed depth (2 layers) and head count (4; the head dim grows
with width), d_ff by LLaMA's rule; muP's base width is the narrowest (base_d_model=32),
so the 32-wide models are the same under sp and mup. Adam (AdamW without weight decay,
to keep the lr alone in question), 50 warmup steps then cosine to 10%, 500 steps of
16 x 64 tokens (0.5M tokens) on the embedded offline corpus; final val loss over the
whole validation split (one evaluation, about 7% of a run). The lrs are powers of 2
from 2^-9 to 2^-4 (base lr: under muP the hidden matrices get lr / m); the first grid
(2^-10..2^-6) put muP's optimum and SP's at the narrowest width on its upper edge.
Three seeds (init and data order; seed k of every point shares its data order), so the
report gives each width's optimum with a CI and says whether its shift is resolved.
Width 256 (the earlier 8x range) would cost more than the rest together; 4x in width
with three seeds is what fits about 75 minutes on two CPU cores.
"""
from __future__ import annotations

from jaxlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

SEEDS = 3
POPULATION = 18   # one program per (parametrization, width): its 6 lrs x 3 seeds
WIDTHS = (32, 64, 128)
LOG2_LRS = tuple(range(-9, -3))
PARAMETRIZATIONS = ('sp', 'mup')


def config() -> Config:
  return Config(
      model=ModelConfig(d_model=WIDTHS[0], n_layers=2, n_heads=4, base_d_model=WIDTHS[0]),
      optim=OptimConfig(lr=2.0 ** -7, weight_decay=0.0, warmup_steps=50),
      data=DataConfig(seq_len=64),
      train=TrainConfig(steps=500, batch_size=16, log_every=25, eval_every=0,
                        eval_batches='all', checkpoint_every=0, keep_checkpoints=1),
  )


def grid(parametrizations, widths, log2_lrs) -> dict[str, list[str]]:
  """{label: overrides}: widest models first, so a partial sweep has every width of the
  parametrizations it reached."""
  out = {}
  for p in parametrizations:
    for w in sorted(widths, reverse=True):
      for k in log2_lrs:
        out[f'{p}_w{w}_log2lr{k}'] = [f'model.parametrization={p}', f'model.d_model={w}',
                                    f'optim.lr={2.0 ** k!r}']
  return out


def runs(cfg: Config) -> dict[str, list[str]]:
  return grid(PARAMETRIZATIONS, WIDTHS, LOG2_LRS)
