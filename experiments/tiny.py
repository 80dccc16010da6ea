"""A seconds-long run for tests and smoke checks."""
from jaxlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def config() -> Config:
  return Config(
      model=ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64),
      optim=OptimConfig(lr=1e-2, warmup_steps=2),
      data=DataConfig(seq_len=32),
      train=TrainConfig(steps=20, batch_size=4, log_every=2, eval_every=10, eval_batches=2,
                        checkpoint_every=5, keep_checkpoints=3),
  )
