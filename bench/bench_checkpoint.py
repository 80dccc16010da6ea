"""Benchmark: what verified checkpoints cost -- the state's fingerprint (jaxlab.rundir.fingerprint,
computed on device at every save and again after every restore) against the save and
the restore themselves, on the demo model's full train state (params + AdamW moments).

  python bench/bench_checkpoint.py [--experiment demo] [--reps 5] [--dir /tmp/x]

Rows, each the median of --reps timed repetitions after one untimed warm-up:
  fingerprint       jitted fingerprint of the state and its transfer to the host: its
                    whole cost, were a save to wait for it
  fp on save path   what Checkpointer.save waits for: the fingerprint's dispatch (orbax
                    fetches the result in its commit, beside the array writes)
  save              Checkpointer.save (which includes the fingerprint) + wait until the
                    checkpoint is on disk (timed alternately with the next row)
  save w/o fp       the same orbax save without the fingerprint (orbax's manager called
                    with the same items), the baseline the fingerprint adds to
  restore + verify  Checkpointer.restore (reads, then fingerprints and compares)
The fingerprint's cost to a save is `fp on save path` / save w/o fp; `save` - `save w/o
fp` is the same cost measured end to end (within the save's own run-to-run noise).
One-off compile time of the fingerprint is printed apart (once per run and model shape).
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import jax
import orbax.checkpoint as ocp

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jaxlab import config as config_lib  # noqa: E402
from jaxlab import data as data_lib  # noqa: E402
from jaxlab.rundir import fingerprint as fp_lib  # noqa: E402
from jaxlab.rundir.checkpoint import Checkpointer, save_items  # noqa: E402
from jaxlab.models.flops import count_params  # noqa: E402
from jaxlab.parallel import make_mesh  # noqa: E402
from jaxlab.train.program import build_program  # noqa: E402


def _interleaved_medians(fns: dict, reps: int) -> dict:
  """Median seconds of each fn, timed in alternating order in each repeat (drift in the
  machine's speed reaches both sides alike), after one untimed warm-up of each."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for rep in range(reps):
    for name in (list(fns) if rep % 2 == 0 else list(fns)[::-1]):
      t0 = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(v) for name, v in times.items()}


def _median_time(fn, reps: int) -> float:
  return _interleaved_medians({'': fn}, reps)['']


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--experiment', default='demo')
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--dir', default=None, help='where to write (default: a temp dir)')
  args = parser.parse_args()

  cfg = config_lib.load(args.experiment, [])
  program = build_program(cfg, make_mesh(cfg.mesh))
  state = program.init_state()
  tokenizer = data_lib.make_tokenizer(cfg.data)
  iterator = data_lib.make_train_iterator(cfg.data, tokenizer, cfg.train.batch_size)
  meta = {'tokens': 0, 'flops': 0.0}
  n_bytes = sum(x.nbytes for x in jax.tree.leaves(state))

  t0 = time.perf_counter()
  jax.block_until_ready(fp_lib.fingerprint(state))
  compile_s = time.perf_counter() - t0

  root = pathlib.Path(args.dir or tempfile.mkdtemp(prefix='bench_ckpt_'))
  ckpt = Checkpointer(root / 'verified', keep=2, async_save=False)
  bare = ocp.CheckpointManager(root / 'bare', options=ocp.CheckpointManagerOptions(
      max_to_keep=2, create=True, enable_async_checkpointing=False))
  counter = {'verified': 0, 'bare': 0}

  def save():
    counter['verified'] += 1
    ckpt.save(counter['verified'], state, iterator, meta)
    ckpt.wait()

  def save_bare():
    counter['bare'] += 1
    bare.save(counter['bare'], args=ocp.args.Composite(**save_items(state, iterator, meta)),
              force=True)
    bare.wait_until_finished()

  rows = {
      'fingerprint': _median_time(lambda: jax.device_get(fp_lib.fingerprint(state)), args.reps),
      'fp on save path': _median_time(lambda: fp_lib.fingerprint(state), args.reps),
      **_interleaved_medians({'save': save, 'save w/o fp': save_bare}, args.reps),
      'restore + verify': _median_time(
          lambda: ckpt.restore(ckpt.all_steps()[-1], program.abstract_state, iterator),
          args.reps),
  }
  ckpt.close()
  bare.close()
  if args.dir is None:
    shutil.rmtree(root)

  print(f'{args.experiment}: {count_params(state.params):,} params, train state '
        f'{n_bytes / 2**20:.1f} MiB, {jax.devices()[0].device_kind} x {jax.device_count()}, '
        f'median of {args.reps}')
  print(f'fingerprint compile (once per run and shape): {compile_s * 1e3:.0f} ms\n')
  print('| operation | ms | share of a save w/o fp |')
  print('|---|---:|---:|')
  for name, seconds in rows.items():
    print(f'| {name} | {seconds * 1e3:.1f} | {100 * seconds / rows["save w/o fp"]:.2f}% |')


if __name__ == '__main__':
  main()
