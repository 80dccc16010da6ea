"""Benchmark: jaxlab's train step against the same step written as a bare flax + optax loop.

    python bench/bench_step.py [--steps N] [--sizes 128x4 256x6x128x8 ...]
                                     [--reps R] [--compile-layers 4,16,48] [--out FILE]
                                     [--mesh DATA,FSDP,TENSOR]

Three measurements, printed as one markdown table (also written to --out):

1. Throughput (tokens/s) for a few model sizes, each measured three ways, interleaved
   and repeated --reps times (the median over repeats is reported):
     jaxlab     `jaxlab.train.train(cfg)` end to end: grain pipeline, host-to-device
                transfer, the jitted step, metric fetching and logging. The number is
                the median of the tokens_per_sec that the loop writes to metrics.jsonl
                (its first window holds the compile and is null by design).
     jaxlab fn  the function `make_train_step` returns, driven by a bare Python loop on a
                fixed on-device batch: jaxlab's step without jaxlab's loop. It separates
                the cost of the loop (jaxlab vs jaxlab fn) from the cost of the step
                itself (jaxlab fn vs bare).
     bare       the same Transformer, clip + AdamW (same schedule, hparams and
                weight-decay mask) and next-token cross-entropy, hand-written: one
                jax.jit with donated state and a fixed random on-device batch.
   overhead = 1 - jaxlab / bare. MFU = tokens/s x FLOPs per token (jaxlab.models.flops, the
   one formula) / the devices' dense bf16 peak; '-' where the peak is unknown (CPU).
   --mesh shards jaxlab and jaxlab fn over a (data, fsdp, tensor) mesh of all devices;
   the bare step is single-device, so it is left out when the mesh spans more than one.
   --weight-stats adds 'fn +ws': jaxlab fn with train.weight_stats on (the weight
   diagnostics in every step), and its cost 1 - (fn +ws) / fn.
2. Compile time (lower + compile, wall clock, fresh jit, no persistent cache) of the
   jitted train step with the loop's shardings, at several depths of the same width;
   layers sit under nn.scan, so depth should barely matter.
3. --peer nanodo [--peer-path DIR]: jaxlab's step against nanodo's at the issue's shapes,
   interleaved in this process (bench/peer_nanodo.py; DIR, or $NANODO_PATH, is a
   checkout of github.com/google-deepmind/nanodo; skipped when there is none).
   --peer-only runs just this.

Nothing here asserts on speed: it measures and reports.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax

# No persistent compilation cache: every compile measured here is a real one.
jax.config.update('jax_enable_compilation_cache', False)

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from jaxlab.config import (Config, DataConfig, MeshConfig, ModelConfig, OptimConfig,  # noqa: E402
                           TrainConfig, validate)
from jaxlab.models.flops import count_params, flops_per_token, mfu  # noqa: E402
from jaxlab.models import Transformer  # noqa: E402
from jaxlab.parallel import make_mesh  # noqa: E402
from jaxlab.train import train  # noqa: E402
from jaxlab.train.program import build_program  # noqa: E402

LOG_EVERY = 10      # jaxlab's logging (and host sync) interval, the demo's value
HEAD_DIM = 64
BYTE_VOCAB = 257    # the byte tokenizer's vocabulary, padded up to a multiple of mesh.tensor
ON_GPU = jax.default_backend() == 'gpu'

# d_model x n_layers x seq_len x batch. CPU sizes take seconds per measurement on 2 cores.
DEFAULT_SIZES = (['1024x8x1024x16', '1536x12x2048x8', '2048x16x2048x8'] if ON_GPU
                 else ['128x4x128x16', '256x6x128x8', '384x8x128x8'])
DEFAULT_STEPS = 100 if ON_GPU else 20
DEFAULT_DTYPE = 'bfloat16' if ON_GPU else 'float32'
COMPILE_SIZE = '1024x0x1024x16' if ON_GPU else '256x0x128x8'   # width, seq, batch


def log(msg: str):
  print(f'[bench] {msg}', file=sys.stderr, flush=True)


def parse_size(text: str) -> tuple[int, int, int, int]:
  parts = [int(p) for p in text.lower().split('x')]
  default = [int(p) for p in DEFAULT_SIZES[0].split('x')]
  if not 2 <= len(parts) <= 4:
    raise SystemExit(f'--sizes entry {text!r} must look like DxL[xT[xB]] (d_model x n_layers '
                     'x seq_len x batch), e.g. 256x6x128x8')
  return tuple(parts + default[len(parts):])


def make_config(d: int, layers: int, seq: int, batch: int, dtype: str, steps: int,
                name: str, workdir: str, mesh: MeshConfig = MeshConfig()) -> Config:
  tensor = dict(make_mesh(mesh).shape)['tensor']
  vocab = -(-BYTE_VOCAB // tensor) * tensor   # the vocab dim splits over 'tensor'
  cfg = Config(
      name=name, mesh=mesh,
      model=ModelConfig(d_model=d, n_layers=layers, n_heads=max(1, d // HEAD_DIM), dtype=dtype,
                        vocab_size=vocab),
      optim=OptimConfig(),
      data=DataConfig(seq_len=seq),
      train=TrainConfig(steps=steps, batch_size=batch, log_every=LOG_EVERY, eval_every=0,
                        eval_batches=0, checkpoint_every=0, keep_checkpoints=1,
                        workdir=workdir))
  return validate(cfg)


# ------------------------------------------------------------------------------ jaxlab

def time_jaxlab(cfg: Config) -> tuple[float, list[float], float]:
  """(median tokens/s over logged windows, all window rates, run wall seconds)."""
  t0 = time.perf_counter()
  with open(pathlib.Path(cfg.train.workdir) / f'{cfg.name}.stdout', 'w') as out, \
      contextlib.redirect_stdout(out):
    train(cfg)
  wall = time.perf_counter() - t0
  path = pathlib.Path(cfg.train.workdir) / cfg.name / 'metrics.jsonl'
  rates = [r['tokens_per_sec'] for r in map(json.loads, path.read_text().splitlines())
           if r.get('tokens_per_sec') is not None]
  return statistics.median(rates), rates, wall


def time_jaxlab_fn(cfg: Config, steps: int) -> float:
  """jaxlab's jitted step (same shardings as the loop) in a bare Python loop."""
  program = build_program(cfg, make_mesh(cfg.mesh))
  step_fn, in_sharding = program.train_step, program.batch_sharding
  seq, batch = cfg.data.seq_len, cfg.train.batch_size
  state = program.init_state()
  tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, cfg.model.vocab_size,
                              jnp.int32)
  data = {'tokens': jax.device_put(tokens, in_sharding),
          'segment_ids': jax.device_put(jnp.ones_like(tokens), in_sharding)}
  for _ in range(2):   # compile + warm up
    state, metrics = step_fn(state, data)
  jax.block_until_ready((state, metrics))
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, data)
  jax.block_until_ready((state, metrics))
  return steps * batch * seq / (time.perf_counter() - t0)


# -------------------------------------------------------------------------------- bare

def time_bare(cfg: Config, steps: int) -> float:
  """The same step, hand-written: flax model, optax clip + AdamW, jit with donation."""
  mc, oc = cfg.model, cfg.optim
  seq, batch, total = cfg.data.seq_len, cfg.train.batch_size, cfg.train.steps
  model = Transformer(mc)

  @jax.jit
  def init(key):
    return nn.unbox(model.init(key, jnp.zeros((1, seq), jnp.int32))['params'])

  params = init(jax.random.key(cfg.train.seed))
  warmup = min(oc.warmup_steps, total - 1)
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, oc.lr, warmup),
       optax.cosine_decay_schedule(oc.lr, max(total - warmup, 1), alpha=oc.final_lr_fraction)],
      [warmup])

  def no_decay_on_norms(p):   # the same mask as jaxlab's 'sp' table: norm gains not decayed
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key != 'scale', p)

  tx = optax.chain(optax.clip_by_global_norm(oc.grad_clip),
                   optax.adamw(schedule, b1=oc.b1, b2=oc.b2, eps=oc.eps,
                               weight_decay=oc.weight_decay, mask=no_decay_on_norms))
  opt_state = tx.init(params)

  def loss_fn(p, tokens_BxT1):
    logits_BxTxV = model.apply({'params': p}, tokens_BxT1[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits_BxTxV, tokens_BxT1[:, 1:]).mean()

  def _step(p, o, tokens_BxT1):
    loss, grads = jax.value_and_grad(loss_fn)(p, tokens_BxT1)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  step = jax.jit(_step, donate_argnums=(0, 1))
  tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, mc.vocab_size, jnp.int32)
  for _ in range(2):   # compile + warm up
    params, opt_state, loss = step(params, opt_state, tokens)
  jax.block_until_ready((params, opt_state, loss))
  t0 = time.perf_counter()
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state, tokens)
  jax.block_until_ready((params, opt_state, loss))
  return steps * batch * seq / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- compile

def compile_seconds(cfg: Config) -> tuple[float, float]:
  """(lower seconds, compile seconds) of jaxlab's train step, fresh jit, loop shardings."""
  jax.clear_caches()
  program = build_program(cfg, make_mesh(cfg.mesh))
  step_fn, in_sharding, abstract = (program.train_step, program.batch_sharding,
                                    program.abstract_state)
  seq, batch = cfg.data.seq_len, cfg.train.batch_size
  row = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32, sharding=in_sharding)
  t0 = time.perf_counter()
  lowered = step_fn.lower(abstract, {'tokens': row, 'segment_ids': row})
  t1 = time.perf_counter()
  lowered.compile()
  t2 = time.perf_counter()
  return t1 - t0, t2 - t1


# ------------------------------------------------------------------------------- main

def fmt_rate(x: float) -> str:
  return '-' if x != x else f'{x:,.0f}'


def spread(values: list[float]) -> str:
  if len(values) < 2:
    return '-'
  return f'{100 * (max(values) - min(values)) / statistics.median(values):.1f}%'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--steps', type=int, default=DEFAULT_STEPS,
                      help=f'timed steps per measurement (rounded up to a multiple of '
                           f'{LOG_EVERY}); default {DEFAULT_STEPS}')
  parser.add_argument('--sizes', nargs='+', default=DEFAULT_SIZES,
                      help='model sizes DxL[xT[xB]]: d_model x n_layers x seq_len x batch')
  parser.add_argument('--reps', type=int, default=3, help='repeats of each measurement')
  parser.add_argument('--dtype', default=DEFAULT_DTYPE, choices=['float32', 'bfloat16'])
  parser.add_argument('--compile-layers', default='4,16,48',
                      help='depths for the compile-time measurement ("" skips it)')
  parser.add_argument('--mesh', default=None, metavar='DATA,FSDP,TENSOR',
                      help='mesh axis sizes over all devices, e.g. 1,8,1 (one may be -1); '
                           'default: data parallel over every device')
  parser.add_argument('--weight-stats', action='store_true',
                      help="also time jaxlab fn with train.weight_stats on ('fn +ws')")
  parser.add_argument('--peer', choices=['nanodo'], default=None,
                      help='also compare the step with a peer codebase (peer_nanodo.py)')
  parser.add_argument('--peer-path', default=None, metavar='DIR',
                      help='the peer checkout (default $NANODO_PATH); none: skipped')
  parser.add_argument('--peer-only', action='store_true',
                      help='only the peer comparison (no throughput or compile tables)')
  parser.add_argument('--out', default='runs/bench_step.md')
  args = parser.parse_args(argv)
  if args.peer_only:
    args.sizes, args.compile_layers = [], ''
  mesh = MeshConfig()
  if args.mesh:
    try:
      data, fsdp, tensor = (int(x) for x in args.mesh.split(','))
    except ValueError:
      parser.error(f'--mesh {args.mesh!r} must be three integers DATA,FSDP,TENSOR, e.g. 1,8,1')
    mesh = MeshConfig(data=data, fsdp=fsdp, tensor=tensor)
  mesh_sizes = dict(make_mesh(mesh).shape)   # a clear error here if it does not tile
  variants = ['jaxlab', 'bare', 'fn'] if jax.device_count() == 1 else ['jaxlab', 'fn']
  if args.weight_stats:
    variants.append('ws')
  steps = -(-max(args.steps, 1) // LOG_EVERY) * LOG_EVERY
  sizes = [parse_size(s) for s in args.sizes]
  t_begin = time.perf_counter()

  rows = []
  with tempfile.TemporaryDirectory(prefix='bench_step_') as workdir:
    for d, layers, seq, batch in sizes:
      # One first window (compile, null rate) + steps / LOG_EVERY timed windows.
      total = steps + LOG_EVERY
      res = {'jaxlab': [], 'fn': [], 'bare': [], 'ws': [], 'wall': []}
      for rep in range(args.reps):
        cfg = make_config(d, layers, seq, batch, args.dtype, total,
                          f'd{d}_l{layers}_r{rep}', workdir, mesh)
        # Interleaved, and the order rotates each repeat, so that a burst of load from
        # elsewhere on the machine (or a variant's after-effects) lands on every variant.
        order = variants
        for which in order[rep % len(order):] + order[:rep % len(order)]:
          if which == 'jaxlab':
            rate, _, wall = time_jaxlab(cfg)
            res['jaxlab'].append(rate)
            res['wall'].append(wall)
          elif which == 'bare':
            res['bare'].append(time_bare(cfg, steps))
          elif which == 'ws':
            with_stats = dataclasses.replace(
                cfg, train=dataclasses.replace(cfg.train, weight_stats=True))
            res['ws'].append(time_jaxlab_fn(with_stats, steps))
          else:
            res['fn'].append(time_jaxlab_fn(cfg, steps))
        log(f'd{d} L{layers} T{seq} B{batch} rep {rep}: ' + '  '.join(
            f'{k} {res[k][-1]:,.0f}' for k in variants) + ' tok/s')
      model = Transformer(cfg.model)
      n_params = count_params(jax.eval_shape(
          lambda k: model.init(k, jnp.zeros((1, seq), jnp.int32)), jax.random.key(0)))
      med = {k: statistics.median(res[k]) if res[k] else float('nan')
             for k in ('jaxlab', 'fn', 'bare', 'ws')}
      fpt = flops_per_token(cfg.model, seq)
      util = {k: mfu(med[k] * fpt, jax.devices()[0].device_kind, jax.device_count())
              for k in ('jaxlab', 'fn')}
      rows.append((d, layers, seq, batch, n_params, med, res, util))

    compile_rows = []
    depths = [int(x) for x in args.compile_layers.split(',') if x.strip()]
    if depths:
      cd, _, cseq, cbatch = parse_size(COMPILE_SIZE)

      def make(n_layers):
        return make_config(cd, n_layers, cseq, cbatch, args.dtype, 100, 'compile', workdir,
                           mesh)

      compile_seconds(make(2))   # warm-up: one-time tracing / backend set-up costs
      times = {n: [] for n in depths}
      for rep in range(args.reps):
        for n in depths:   # interleaved, so machine noise hits every depth alike
          times[n].append(compile_seconds(make(n)))
          log(f'compile L{n} rep {rep}: lower {times[n][-1][0]:.2f}s '
              f'compile {times[n][-1][1]:.2f}s')
      for n in depths:
        lo = statistics.median(t[0] for t in times[n])
        co = statistics.median(t[1] for t in times[n])
        tot = statistics.median(t[0] + t[1] for t in times[n])
        compile_rows.append((n, lo, co, tot, [t[0] + t[1] for t in times[n]]))

  dev = jax.devices()[0]
  lines = [
      '# jaxlab train-step benchmark',
      '',
      f'- date: {datetime.datetime.now().astimezone().isoformat(timespec="seconds")}',
      f'- device: {dev.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s), '
      f'{os.cpu_count()} host CPU cores), '
      f'jax {jax.__version__}, flax {__import__("flax").__version__}, optax {optax.__version__}',
      f'- command: `python {" ".join(sys.argv)}`',
  ]
  if rows:
    lines += [
      f'- mesh: data {mesh_sizes["data"]} x fsdp {mesh_sizes["fsdp"]} x tensor '
      f'{mesh_sizes["tensor"]}' + ('' if 'bare' in variants else ' (bare: single-device, '
                                   'not run)'),
      f'- dtype {args.dtype}; head_dim {HEAD_DIM}; vocab {cfg.model.vocab_size} (byte '
      'tokenizer); AdamW + clip 1.0, cosine schedule; eval off; checkpoint at the end only',
      f'- each measurement: {steps} timed steps after warm-up; {args.reps} repeats, '
      'interleaved in a rotating order; median over repeats reported; '
      'spread = (max - min) / median over repeats',
      f'- jaxlab = `jaxlab.train.train(cfg)`, median of the tokens_per_sec windows in '
      f'metrics.jsonl (log_every={LOG_EVERY}, so {steps // LOG_EVERY} windows per run after '
      'the compile window); jaxlab fn = the jitted step from `make_train_step` in a bare loop '
      'on a fixed device batch; bare = hand-written flax + optax step',
      '',
      '## Throughput (tokens/s)',
      '',
      '| d_model x layers | params | seq x batch | timed steps | jaxlab | jaxlab fn | bare | '
      'overhead (1 - jaxlab/bare) | loop part (1 - jaxlab/fn) | step part (1 - fn/bare) | '
      'spread jaxlab / fn / bare | MFU jaxlab / fn | jaxlab run wall (s) |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]

  def pct(x):
    return '-' if x is None or x != x else f'{100 * x:.1f}%'

  for d, layers, seq, batch, n_params, med, res, util in rows:
    lines.append(
        f'| {d} x {layers} | {n_params / 1e6:.2f}M | {seq} x {batch} | {steps} x {args.reps} | '
        f'{fmt_rate(med["jaxlab"])} | {fmt_rate(med["fn"])} | {fmt_rate(med["bare"])} | '
        f'{pct(1 - med["jaxlab"] / med["bare"])} | {pct(1 - med["jaxlab"] / med["fn"])} | '
        f'{pct(1 - med["fn"] / med["bare"])} | '
        f'{spread(res["jaxlab"])} / {spread(res["fn"])} / {spread(res["bare"])} | '
        f'{pct(util["jaxlab"])} / {pct(util["fn"])} | {statistics.median(res["wall"]):.1f} |')
  if compile_rows:
    cd, _, cseq, cbatch = parse_size(COMPILE_SIZE)
    base = compile_rows[0][3]
    lines += [
        '',
        f'## Compile time of the jitted train step (d_model {cd}, seq {cseq} x batch {cbatch}, '
        f'fresh jit, median of {args.reps})',
        '',
        '| n_layers | lower (s) | compile (s) | lower + compile (s) | runs (s) | '
        f'ratio to {compile_rows[0][0]} layers |',
        '|---|---|---|---|---|---|',
    ]
    for n, lo, co, tot, runs in compile_rows:
      lines.append(f'| {n} | {lo:.2f} | {co:.2f} | {tot:.2f} | '
                   f'{", ".join(f"{r:.2f}" for r in runs)} | {tot / base:.2f}x |')
  if args.weight_stats:
    lines += ['', '## Weight diagnostics in the step (train.weight_stats)', '',
              '| d_model x layers | jaxlab fn | fn +ws | cost (1 - (fn +ws) / fn) | '
              'per-repeat costs |', '|---|---|---|---|---|']
    for d, layers, seq, batch, n_params, med, res, util in rows:
      per = ', '.join(pct(1 - w / f) for w, f in zip(res['ws'], res['fn']))
      lines.append(f'| {d} x {layers} | {fmt_rate(med["fn"])} | {fmt_rate(med["ws"])} | '
                   f'{pct(1 - med["ws"] / med["fn"])} | {per} |')
  if args.peer:
    import peer_nanodo
    checkout = peer_nanodo.find_checkout(args.peer_path)
    if checkout is None:
      lines += ['', '## jaxlab vs nanodo: skipped (no checkout: pass --peer-path DIR or set '
                'NANODO_PATH)']
    else:
      reps, peer_steps = max(args.reps, 5), 20
      lines += ['', *peer_nanodo.table(peer_nanodo.compare(checkout, (4, 16), reps, peer_steps,
                                                           log=log), reps, peer_steps)]
  lines += ['', f'Benchmark wall time: {time.perf_counter() - t_begin:.0f} s', '']
  table = '\n'.join(lines)
  print(table)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(table)
  log(f'wrote {out}')


if __name__ == '__main__':
  main()
