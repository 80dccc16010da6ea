"""Checkpoints restore across context sizes: the tiny model trains 6 steps at
mesh.data=2 x mesh.context=4 (checkpoints every 2 steps); copies of the run, cut back to
step 2, resume on mesh.context=8 and on mesh.context=2; steps 3..6 should give the same
losses (float32 rounding). About 3 minutes of CPU on 2 cores.

  python bench/ring_resume_check.py [WORKDIR]   (sets 8 fake CPU devices itself)
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8 '
                      '--xla_cpu_collective_call_terminate_timeout_seconds=300')

from jaxlab import config as config_lib  # noqa: E402
from jaxlab.train import train  # noqa: E402

COMMON = ['train.steps=6', 'train.log_every=1', 'train.eval_every=0',
          'train.checkpoint_every=2', 'train.keep_checkpoints=10',
          'train.async_checkpoint=false']
RESUMES = {'to_ctx8': ['mesh.data=1', 'mesh.context=8'],
           'to_ctx2': ['mesh.data=4', 'mesh.context=2']}


def losses(run: pathlib.Path) -> dict[int, float]:
  rows = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r['loss'] for r in rows if 'loss' in r and 'event' not in r}


def cut_back(src: pathlib.Path, dest: pathlib.Path, step: int):
  """A copy of run `src` as it was after `step` (its checkpoint, metrics and config)."""
  shutil.rmtree(dest, ignore_errors=True)
  shutil.copytree(src, dest)
  for ckpt in (dest / 'checkpoints').iterdir():
    if ckpt.name.isdigit() and int(ckpt.name) != step:
      shutil.rmtree(ckpt)
  (dest / 'summary.json').unlink()
  lines = (dest / 'metrics.jsonl').read_text().splitlines(keepends=True)
  (dest / 'metrics.jsonl').write_text(
      ''.join(line for line in lines if json.loads(line).get('step', 0) <= step))
  cfg = json.loads((dest / 'config.json').read_text())
  cfg['name'] = dest.name
  (dest / 'config.json').write_text(json.dumps(cfg))


def main(workdir: str = 'runs/ring_resume_check'):
  work = pathlib.Path(workdir)
  common = COMMON + [f'train.workdir={work}']
  train(config_lib.load('tiny', common + ['mesh.data=2', 'mesh.context=4', 'name=orig']))
  want = losses(work / 'orig')
  print('| resumed at step 2 on | max relative loss difference, steps 3..6 |')
  print('|---|---|')
  for name, mesh in RESUMES.items():
    cut_back(work / 'orig', work / name, 2)
    train(config_lib.load('tiny', common + mesh + [f'name={name}']))
    got = losses(work / name)
    diff = max(abs(got[s] - want[s]) / abs(want[s]) for s in range(3, 7))
    print(f'| {" x ".join(mesh)} | {diff:.2e} |', flush=True)


if __name__ == '__main__':
  main(*sys.argv[1:])
