"""Optimizer memory saved by freezing the old blocks of a LLaMA-Pro expansion
(train.trainable=new): LLaMA-2-7B's shapes (32 layers, d 4096, d_ff 11008, vocab 32000)
expanded to 40 layers with an identity block after every 4 (LLaMA-Pro-8B), AdamW.

  python bench/llama_pro_memory.py [--insert-every 4]

Nothing is allocated: the optimizer state's shapes come from jax.eval_shape of the same
optimizer the train step uses (jaxlab.optim.make_optimizer with the resolved
train.trainable), so the bytes are what a run holds (float32 moments), summed over leaves.
"""
from __future__ import annotations

import argparse
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab.config import ModelConfig, OptimConfig
from jaxlab.growth import new_layers
from jaxlab.growth.depth import insert_every
from jaxlab.models import Transformer, schema
from jaxlab.optim import make_optimizer, trainable

LLAMA2_7B = ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008,
                        norm_eps=1e-5)


def nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--insert-every', type=int, default=4)
  args = parser.parse_args()
  src = LLAMA2_7B
  layers = insert_every(src.n_layers, args.insert_every)
  dst = dataclasses.replace(src, n_layers=len(layers))
  params = nn.unbox(jax.eval_shape(lambda: Transformer(dst).init(
      jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params']))
  ocfg = OptimConfig()
  rows = {'every param': None,
          'train.trainable=new': trainable.resolve(
              'new', dst, new_layers(src, dst, 'zero', layers), schema.specs(dst))}
  print(f'LLaMA-Pro: {src.n_layers} -> {dst.n_layers} layers (a block after every '
        f'{args.insert_every}); params {nbytes(params) / 2**30:.2f} GiB (float32)\n')
  print('| trains | trainable params | optimizer state (AdamW) | saved |')
  print('|---|---|---|---|')
  full = None
  for label, table in rows.items():
    tx = make_optimizer(ocfg, dst, optax.constant_schedule(1e-4), trainable=table)
    state = nbytes(jax.eval_shape(tx.init, params))
    full = full or state
    n = n_trainable(dst, table)
    print(f'| {label} | {n / 1e9:.3f} B | {state / 2**30:.2f} GiB | '
          f'{(full - state) / 2**30:.2f} GiB ({100 * (full - state) / full:.0f}%) |')


def n_trainable(cfg: ModelConfig, table) -> int:
  """Params that train: whole params, or the listed rows (layers) of a scanned one."""
  total = 0
  for path, param in schema.specs(cfg).items():
    size = math.prod(param.shape(cfg))
    rows = trainable.ALL if table is None else table[path]
    total += size if rows is trainable.ALL else size // cfg.n_layers * len(rows)
  return total


if __name__ == '__main__':
  main()
