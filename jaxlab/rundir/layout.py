"""Where a run's files are: the run-directory path rule, the name of every file in it,
and the `<label>/seed<k>` directories of a sweep with seeds. Every layer that writes or
reads a run directory takes these names from here.

  <train.workdir>/<name>/      the run directory (`run_dir_of`)
    config.json                the Config and the history of accepted changes
                               (jaxlab.config.loading writes the format, jaxlab.rundir.directory
                               keeps the history)
    metrics.jsonl              one JSON object per logged step, and {"event": ...} lines
                               (jaxlab.rundir.records)
    summary.json               written when a session ends
    data.json                  what the run trains on (jaxlab.data.identity)
    provenance.json            where the run came from (jaxlab.rundir.provenance)
    .lock                      flock'd by process 0 while a session runs
    checkpoints/               orbax steps (jaxlab.rundir.checkpoint), unless
                               train.checkpoint_dir puts them elsewhere
    checkpoints_unreadable/    steps a verified restore set aside (<checkpoint dir>_unreadable)
    tensorboard/               TensorBoard events (train.trackers, jaxlab.rundir.trackers)
    wandb/, wandb.json         Weights & Biases files and the W&B run id (train.trackers=...,wandb)
    profile/                   jax.profiler traces of train.profile_steps
    launch.log                 a sweep point's output under `launch.py sweep --jobs`
    compile.json               `launch.py compile`'s table
  <train.mirror_dir>/<name>/   a copy of the run directory, and its checkpoints
                               (jaxlab.rundir.mirror)
  <sweep dir>/<label>/seed<k>/ one run of a sweep with seeds (`seed_run`)
"""
from __future__ import annotations

import pathlib
import re

from jaxlab.config.loading import CONFIG_FILE
from jaxlab.config.types import Config

METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'
DATA_FILE = 'data.json'
LOCK_FILE = '.lock'
CHECKPOINTS = 'checkpoints'
TENSORBOARD = 'tensorboard'
WANDB_DIR = 'wandb'
WANDB_ID_FILE = 'wandb.json'
PROFILE = 'profile'
LAUNCH_LOG = 'launch.log'
COMPILE_FILE = 'compile.json'

__all__ = ['CHECKPOINTS', 'COMPILE_FILE', 'CONFIG_FILE', 'DATA_FILE', 'LAUNCH_LOG', 'LOCK_FILE',
           'METRICS_FILE', 'PROFILE', 'SEED_KEYS', 'SUMMARY_FILE', 'TENSORBOARD', 'WANDB_DIR',
           'WANDB_ID_FILE',
           'method_and_seed', 'run_dir_of', 'seed_run']


def run_dir_of(cfg: Config) -> pathlib.Path:
  """A run's directory: <train.workdir>/<name>."""
  return pathlib.Path(cfg.train.workdir) / cfg.name


# The seeds a sweep's seed offset k is added to (`launch.py sweep --seeds N --vary V`):
# train.seed draws the init, data.seed the data order.
SEED_KEYS = {'both': ('train.seed', 'data.seed'), 'init': ('train.seed',),
             'data': ('data.seed',)}


def seed_run(label: str, seed: int) -> tuple[str, str]:
  """(label, run name) of seed offset `seed` of a sweep point: the run lives in
  <sweep dir>/<label>/seed<k>/ and is reported as '<label>/seed<k>'."""
  return f'{label}/seed{seed}', f'seed{seed}'


_SEED_LABEL = re.compile(r'^(?P<method>.+)/seed(?P<seed>[0-9]+)$')


def method_and_seed(label: str) -> tuple[str, int | None]:
  """'stack_7pct/seed2' -> ('stack_7pct', 2); a label without a seed dir -> (label, None)."""
  m = _SEED_LABEL.match(label)
  return (m['method'], int(m['seed'])) if m else (label, None)
