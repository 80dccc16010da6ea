"""Helpers for tests that drive `launch.py` in a subprocess on the tiny experiment and read
its run directory back (tests/test_growth_run.py, tests/test_vcycle_run.py)."""
import contextlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOKENS_PER_STEP = 4 * 32                    # tiny: batch 4 x seq_len 32


def launch(*args, workdir=None):
  cmd = [sys.executable, 'launch.py', *args]
  if workdir is not None:
    cmd.append(f'train.workdir={workdir}')
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def refused(*args, cwd=None):
  """`launch.py ARGS` in this process, as a CompletedProcess: for a command that stops
  before anything compiles (a config error, a refused resume), where a subprocess would
  spend its few seconds importing jax. cwd: the directory it runs in (default ROOT)."""
  from jaxlab.launch import cli
  out, err = io.StringIO(), io.StringIO()
  here = os.getcwd()
  try:
    os.chdir(cwd or ROOT)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = cli.main(list(args))
  finally:
    os.chdir(here)
  return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def lines(run_dir):
  return [json.loads(l) for l in (run_dir / 'metrics.jsonl').read_text().splitlines()]


def steps_of(run_dir):
  return [r for r in lines(run_dir) if 'event' not in r]


def events_of(run_dir):
  return [r for r in lines(run_dir) if 'event' in r]


def trajectory(run_dir):
  keep = ('step', 'tokens', 'flops', 'loss', 'val_loss', 'lr', 'grad_norm', 'param_norm')
  return [{k: r[k] for k in keep if k in r} for r in steps_of(run_dir)]


def layer_count(run_dir, step):
  """n_layers of the model saved in a checkpoint, from the stored array's shape."""
  import orbax.checkpoint as ocp
  meta = ocp.StandardCheckpointer().metadata(run_dir / 'checkpoints' / str(step) / 'state')
  tree = getattr(meta, 'item_metadata', meta)
  return tree['params']['layers']['attn']['wq'].shape[0]


def copy_keeping(run_dir, dest, step):
  """A copy of a run dir with only the checkpoint at `step` and no summary: rerunning it
  resumes from that step."""
  shutil.copytree(run_dir, dest)
  for p in (dest / 'checkpoints').iterdir():
    if int(p.name) != step:
      shutil.rmtree(p)
  (dest / 'summary.json').unlink(missing_ok=True)
