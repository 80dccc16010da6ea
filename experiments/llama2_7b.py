"""A Llama-2-7B-shaped model at sequence 4096: the larger benchmark of `launch.py compile`
(README, "Compile before you pay"); not Meta's weights (see `jaxlab.interop` for those).

  python launch.py compile llama2_7b --target tpu:v5p-64
  python launch.py compile llama2_7b --target tpu:v5e-256 train.batch_size=1024

Llama 2 7B's shapes (d_model 4096, 32 layers, 32 heads of 128, SwiGLU 11008, vocabulary
32000; 6.74B parameters), bfloat16 activations, float32 parameters and Adam moments
sharded over every chip (FSDP), full remat, 4 sequences of 4096 per chip on v5p-64 (32
chips) -- MaxText's Llama 2 7B v5p recipe uses the same per-chip batch and sequence.
"""
from jaxlab.config import (Config, DataConfig, MeshConfig, ModelConfig, OptimConfig,
                           TrainConfig)


def config() -> Config:
  return Config(
      model=ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008,
                        dtype='bfloat16', remat='full', attention='auto'),
      optim=OptimConfig(lr=3e-4, warmup_steps=2000),
      data=DataConfig(seq_len=4096),
      mesh=MeshConfig(data=1, fsdp=-1),
      train=TrainConfig(steps=100_000, batch_size=128, log_every=50, eval_every=2000,
                        eval_batches=8, checkpoint_every=2000),
  )
