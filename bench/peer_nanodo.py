"""jaxlab's jitted train step against nanodo's, in one process, interleaved
(`python bench/bench_step.py --peer nanodo --peer-path DIR`, or NANODO_PATH=DIR).

nanodo (github.com/google-deepmind/nanodo) is not vendored or installed by jaxlab: point
--peer-path at a checkout (the directory holding `nanodo/model.py`). Its `nanodo.train`
needs clu (and through it TensorFlow), so the peer step is built from nanodo's own
pieces that import without them -- `nanodo.model.TransformerDo`,
`nanodo.loss.get_default_loss_fn`, `nanodo.optimizer.get_optimizer` (AdamW, global-norm
clipping, wrapped in optax.MultiSteps as nanodo always does) -- and driven the way
`nanodo.train._train_step` drives them (value_and_grad, tx.update, apply_updates), in
one jax.jit with the state donated. nanodo's per-step metrics (`nanodo.metrics
.get_metrics`: global mean / rms of grads, params and updates) are left out, which can
only make nanodo faster: the comparison is against nanodo's leanest step.

Shapes (the issue's): batch 8 x seq 256, d_model 256, 4 heads, 4 and 16 layers, float32,
byte vocabulary (257), AdamW (lr 3e-3, b1 0.9, b2 0.95, wd 0.1, warmup 100, cosine) +
clip 1.0 on both sides. nanodo: GELU MLP with F = 4 d, learned positions, LayerNorm, tied
embedding readout, a Python loop over its blocks (unrolled in the compiled step). jaxlab:
its default model (RMSNorm, RoPE, SwiGLU) with d_ff 704, so that the matmul params match
nanodo's within about 2%, twice: with its default layer loop (nn.scan, one layer compiled)
and unrolled (model.scan_unroll = layers, the loop nanodo compiles).

FLOP/s is model FLOPs: (6 x matmul params + 6 x layers x seq x d_model for causal
attention) per token, each model's own matmul params (jaxlab.models.flops.matmul_params for
jaxlab; q, k, v, out, MLP and the tied readout for nanodo), times tokens per second.
Each repeat times `steps` steps of one side and then the other (the order alternates),
after a compile and warm-up; ratio = jaxlab FLOP/s / nanodo FLOP/s per repeat; the
table gives the median over repeats and the min..max, by wall-clock time and by this
process's CPU time (time.process_time: every thread's CPU seconds). On a machine shared
with other jobs the wall clock also counts the time the scheduler gives to them; the
CPU time counts only the work each step does, so it is the steadier of the two there
(cache contention still reaches it).
"""
from __future__ import annotations

import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

from jaxlab.config import (Config, DataConfig, ModelConfig, OptimConfig, TrainConfig,
                           validate)
from jaxlab.models.flops import flops_per_token
from jaxlab.parallel import make_mesh
from jaxlab.train.program import build_program

BATCH, SEQ, D_MODEL, HEADS, VOCAB = 8, 256, 256, 4, 257
JAXLAB_D_FF = 704
OPTIM = dict(lr=3e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, warmup=100, clip=1.0)
SCHEDULE_STEPS = 10_000   # the lr schedule's length on both sides (the timing runs fewer)


class _AttrDict(dict):
  """What nanodo reads its config through (ml_collections.ConfigDict: .get and attributes)."""
  __getattr__ = dict.__getitem__


def find_checkout(path: str | None) -> pathlib.Path | None:
  """The nanodo checkout from --peer-path or $NANODO_PATH, or None (comparison skipped)."""
  path = path or os.environ.get('NANODO_PATH')
  if not path:
    return None
  root = pathlib.Path(path).expanduser().resolve()
  if not (root / 'nanodo' / 'model.py').is_file():
    raise SystemExit(f'--peer-path {path}: no nanodo/model.py there; point it at a checkout '
                     'of github.com/google-deepmind/nanodo')
  return root


def _random_tokens(rows: int, cols: int):
  return jax.random.randint(jax.random.key(1), (rows, cols), 1, VOCAB, jnp.int32)


def jaxlab_step(layers: int, scan_unroll: int = 1):
  """(step(state, batch) -> (state, metrics), state, batch, FLOPs per step)."""
  cfg = validate(Config(
      name='peer', model=ModelConfig(d_model=D_MODEL, n_layers=layers, n_heads=HEADS,
                                     d_ff=JAXLAB_D_FF, vocab_size=VOCAB, dtype='float32',
                                     scan_unroll=scan_unroll),
      optim=OptimConfig(lr=OPTIM['lr'], b1=OPTIM['b1'], b2=OPTIM['b2'], eps=OPTIM['eps'],
                        weight_decay=OPTIM['weight_decay'], warmup_steps=OPTIM['warmup'],
                        grad_clip=OPTIM['clip']),
      data=DataConfig(seq_len=SEQ),
      train=TrainConfig(steps=SCHEDULE_STEPS, batch_size=BATCH, eval_every=0, eval_batches=0,
                        checkpoint_every=0)))
  program = build_program(cfg, make_mesh(cfg.mesh))
  tokens = jax.device_put(_random_tokens(BATCH, SEQ + 1), program.batch_sharding)
  batch = {'tokens': tokens, 'segment_ids': jnp.ones_like(tokens)}
  return program.train_step, program.init_state(), batch, \
      flops_per_token(cfg.model, SEQ) * BATCH * SEQ


def nanodo_step(checkout: pathlib.Path, layers: int):
  """nanodo's model, loss and optimizer in one donated jit (see the module docstring)."""
  if str(checkout) not in sys.path:
    sys.path.insert(0, str(checkout))
  from flax.training.train_state import TrainState
  from nanodo import loss as nanodo_loss
  from nanodo import model as nanodo_model
  from nanodo import optimizer as nanodo_optimizer

  F = 4 * D_MODEL
  docfg = nanodo_model.DoConfig(D=D_MODEL, H=HEADS, L=SEQ, N=layers, V=VOCAB, F=F,
                                dtype=jnp.float32, fsdp_enabled=False)
  module = nanodo_model.TransformerDo(docfg)
  opt = _AttrDict(
      optimizer='adamw', num_train_steps=SCHEDULE_STEPS, peak_learning_rate=OPTIM['lr'],
      init_learning_rate=0.0, final_learning_rate=0.1 * OPTIM['lr'],
      warmup_steps=OPTIM['warmup'], decay_type='cosine', weight_decay=OPTIM['weight_decay'],
      b1=OPTIM['b1'], b2=OPTIM['b2'], eps=OPTIM['eps'], clip_by_global_norm=OPTIM['clip'])
  c = _AttrDict(opt=opt, log_internal_metrics=False)

  @jax.jit
  def init(rng):
    params = module.init(rng, jnp.zeros((1, SEQ), jnp.int32))['params']
    return TrainState.create(apply_fn=module.apply, params=params,
                             tx=nanodo_optimizer.get_optimizer(opt))

  def step(state, in_BxL):
    loss_fn = nanodo_loss.get_default_loss_fn(in_BxL, state.apply_fn, c)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state)
    return state, {'loss': loss}

  matmul = layers * (4 * D_MODEL * D_MODEL + 2 * D_MODEL * F) + VOCAB * D_MODEL
  flops = (6 * matmul + 6 * layers * SEQ * D_MODEL) * BATCH * SEQ
  return (jax.jit(step, donate_argnums=0), init(jax.random.key(0)), _random_tokens(BATCH, SEQ),
          flops)


def _timed(step, state, batch, steps: int):
  """(state, wall seconds, CPU seconds) of `steps` steps."""
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  return state, time.perf_counter() - t0, time.process_time() - c0


# jaxlab's two ways to compile the layer loop: the default nn.scan (one layer compiled) and
# model.scan_unroll=n_layers (unrolled, as nanodo's Python loop over its blocks is).
VARIANTS = {'scan': 1, 'unrolled': None}


def compare(checkout: pathlib.Path, layers_list, reps: int = 5, steps: int = 20, log=print):
  """[{layers, variant, nanodo, jaxlab (GFLOP/s medians), ratios, cpu_ratios (per
  repeat)}, ...]: one row per layer count and jaxlab variant, all timed in one rotation."""
  rows = []
  for layers in layers_list:
    sides = {f'jaxlab {v}': list(jaxlab_step(layers, unroll or layers))
             for v, unroll in VARIANTS.items()}
    sides['nanodo'] = list(nanodo_step(checkout, layers))
    for side in sides.values():   # compile + warm up
      side[1], _, _ = _timed(side[0], side[1], side[2], 2)
    rates = {name: [] for name in sides}
    cpu = {name: [] for name in sides}
    for rep in range(reps):
      order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
      for name in order:
        step, state, batch, flops = sides[name]
        sides[name][1], wall, cpu_s = _timed(step, state, batch, steps)
        rates[name].append(flops * steps / wall / 1e9)
        cpu[name].append(flops * steps / cpu_s / 1e9)
      log(f'[peer] L{layers} rep {rep}: ' + ', '.join(
          f'{name} {rates[name][-1]:.1f}' for name in sides) + ' GFLOP/s (per CPU second: ' +
          ', '.join(f'{cpu[name][-1]:.1f}' for name in sides) + ')')
    for v in VARIANTS:
      mine = f'jaxlab {v}'
      rows.append(dict(layers=layers, variant=v, nanodo=statistics.median(rates['nanodo']),
                       jaxlab=statistics.median(rates[mine]),
                       ratios=[j / n for j, n in zip(rates[mine], rates['nanodo'])],
                       cpu_ratios=[j / n for j, n in zip(cpu[mine], cpu['nanodo'])]))
  return rows


def table(rows, reps: int, steps: int) -> list[str]:
  lines = [f'## jaxlab vs nanodo: train step, model FLOP/s (batch {BATCH} x seq {SEQ}, d_model '
           f'{D_MODEL}, {HEADS} heads, float32, AdamW + clip; median of {reps} interleaved '
           f'repeats of {steps} steps)', '',
           '| layers | jaxlab layer loop | nanodo (GFLOP/s) | jaxlab (GFLOP/s) | jaxlab / nanodo: '
           'median (min..max) | by CPU time: median (min..max) |', '|---|---|---|---|---|---|']

  def spread(x):
    return f'{statistics.median(x):.2f} ({min(x):.2f}..{max(x):.2f})'
  for r in rows:
    loop = 'nn.scan' if r['variant'] == 'scan' else f'unrolled (model.scan_unroll={r["layers"]})'
    lines.append(f'| {r["layers"]} | {loop} | {r["nanodo"]:.1f} | {r["jaxlab"]:.1f} | '
                 f'{spread(r["ratios"])} | {spread(r["cpu_ratios"])} |')
  return lines


if __name__ == '__main__':   # python bench/peer_nanodo.py DIR [LAYERS ...]
  found = find_checkout(sys.argv[1] if len(sys.argv) > 1 else None)
  if found is None:
    raise SystemExit('usage: peer_nanodo.py NANODO_CHECKOUT [LAYERS ...] (or set NANODO_PATH)')
  layer_counts = [int(x) for x in sys.argv[2:]] or [4, 16]
  print('\n'.join(table(compare(found, layer_counts), 5, 20)))
