"""The main job for now: a small LLaMA-style model on the embedded offline corpus,
a few minutes on a laptop CPU. `make demo` runs it and writes the report."""
from jaxlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def config() -> Config:
  return Config(
      model=ModelConfig(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2),
      optim=OptimConfig(lr=3e-3, warmup_steps=50, weight_decay=0.1),
      data=DataConfig(seq_len=128),
      train=TrainConfig(steps=600, batch_size=16, log_every=10, eval_every=100,
                        eval_batches=8, checkpoint_every=200),
  )
