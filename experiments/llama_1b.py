"""A ~1B-parameter LLaMA-shaped model at sequence 2048, sized for one TPU v5p-8 (4 chips):
the benchmark of `launch.py compile` (README, "Compile before you pay").

  python launch.py compile llama_1b --target tpu:v5p-8

d_model 2048, 20 layers, 16 heads of 128, SwiGLU 5504, LLaMA's vocabulary size (32000),
bfloat16 activations, parameters and Adam moments in float32 sharded over every chip
(FSDP), 4 sequences per chip. 1.14B parameters (1.01B without embedding and head).
Training it on the embedded corpus works (the byte tokenizer uses 257 of the 32000 rows)
but is not what it is for.
"""
from jaxlab.config import (Config, DataConfig, MeshConfig, ModelConfig, OptimConfig,
                           TrainConfig)


def config() -> Config:
  return Config(
      model=ModelConfig(vocab_size=32000, d_model=2048, n_layers=20, n_heads=16,
                        dtype='bfloat16', remat='save_dots', attention='auto'),
      optim=OptimConfig(lr=3e-4, warmup_steps=2000),
      data=DataConfig(seq_len=2048),
      mesh=MeshConfig(data=1, fsdp=-1),
      train=TrainConfig(steps=100_000, batch_size=16, log_every=50, eval_every=2000,
                        eval_batches=8, checkpoint_every=2000),
  )
