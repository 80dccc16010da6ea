"""`train(cfg)`: runs or resumes one training run (jaxlab.train.trainer.Trainer) under
the stop agreement that turns SIGTERM / SIGINT into a checkpoint and an exit every host
takes at the same step (jaxlab.train.stop).

Rerunning the same run directory resumes from its newest verified checkpoint; the
metrics logged after that checkpoint are dropped and logged again, so metrics.jsonl
always reads as one uninterrupted run.
"""
from __future__ import annotations

from jaxlab.config.types import Config
from jaxlab.parallel import initialize_distributed
from jaxlab.rundir.provenance import Origin
from jaxlab.train.hooks import Diverged
from jaxlab.train.runnable import resolve
from jaxlab.train.stop import Preempted, StopAgreement
from jaxlab.train.storage import QuietStorageNoise
from jaxlab.train.trainer import Trainer

__all__ = ['Diverged', 'Preempted', 'train']


def train(cfg: Config, origin: Origin | None = None) -> dict:
  """Runs (or resumes) one training run; returns its summary. Raises Diverged or
  Preempted after writing the summary, ConfigError (exit 2 at the CLI) for a bad input
  or a storage failure. origin: the experiment file and overrides that made cfg, which a
  fresh start records in provenance.json (jaxlab.rundir.provenance)."""
  cfg = resolve(cfg)
  initialize_distributed(cfg.mesh)  # before anything touches a device
  with StopAgreement() as stop, QuietStorageNoise() as quiet, \
      Trainer(cfg, stop, quiet, origin) as trainer:
    return trainer.run()
