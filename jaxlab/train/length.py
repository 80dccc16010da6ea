"""A resumed run whose train.steps changed: the checkpoint it goes on from, so that it
equals a run of the new length from the start, bit for bit -- or why none can.

A checkpoint at step s can go on as a run of the new length when every step up to s took
the lr the new length gives it (jaxlab.optim.build.same_lr_through): under
optim.schedule=constant any checkpoint; under wsd one at or before the decay start (the
earlier of the two lengths'); under cosine / linear none, since their lr after the
warmup depends on train.steps at every step. The run restores the latest such checkpoint
before the new end -- not the newest one, whose steps took the old length's decay -- with
the data position, step, token and FLOP counters it holds; the checkpoints after it are
moved into checkpoints_superseded/ and metrics.jsonl / summary.json copied as .bak-<time>
(the old length's decayed end stays readable). Lowering train.steps follows the same rule
(a checkpoint before the new end, so that at least one step is trained and the summary
is the new length's). A run with a growth plan is refused: growth.timing=auto and
growth.optimizer=reset set its phases and restarts from train.steps.

The rule is the run directory's new_length (jaxlab.rundir.directory.check_config); its
answer travels in ConfigChanges.new_length to the trainer, which restores at_most
restore_at and prints `describe`'s line.
"""
from __future__ import annotations

import dataclasses
import os

from jaxlab.config.types import Config, ConfigError
from jaxlab.optim.build import same_lr_through


@dataclasses.dataclass(frozen=True)
class NewLength:
  old_steps: int
  new_steps: int
  last: int          # the latest step a checkpoint it goes on from may have
  restore_at: int    # the latest such checkpoint
  why: str           # what sets `last` (same_lr_through's reason)


def plan(cfg: Config, old_steps: int, checkpoints: list[int],
         run_dir: str | os.PathLike) -> NewLength:
  """The checkpoint a run of old_steps, resumed as cfg, goes on from; ConfigError (one
  line: the reason and the ways out) when none can."""
  new_steps = cfg.train.steps

  def refuse(reason: str) -> ConfigError:
    return ConfigError(
        f'{run_dir} cannot go on with train.steps={new_steps} (it was {old_steps}): '
        f'{reason}. To continue that run, rerun it without this change (python launch.py '
        f'run {run_dir}); to train {new_steps} steps, pick another name=... or delete {run_dir}')
  if cfg.growth.method != 'none':
    raise refuse(f'its growth plan (growth.method={cfg.growth.method}) may time its phases '
                 'and restart its optimizer from train.steps')
  limit, why = same_lr_through(cfg.optim, old_steps, new_steps)
  if limit == 0:
    raise refuse(why)
  last = new_steps - 1 if limit is None else min(limit, new_steps - 1)
  usable = [s for s in checkpoints if s <= last]
  if not usable:
    t = cfg.train
    advice = ('; to extend a run later, keep a checkpoint from before its lr decay begins (a '
              'train.checkpoint_every that falls there)' if cfg.optim.schedule == 'wsd' else '')
    raise refuse(f'{why}, and no checkpoint is left at or before step {last} (it has steps '
                 f'{", ".join(map(str, checkpoints))}; train.checkpoint_every='
                 f'{t.checkpoint_every}, train.keep_checkpoints={t.keep_checkpoints}){advice}')
  return NewLength(old_steps, new_steps, last, max(usable), why)


def describe(length: NewLength, run_dir, restored_step: int, superseded: list[int],
             copies: list[str]) -> str:
  """The one line a run prints when it goes on at its new length."""
  line = (f'resuming {run_dir} from step {restored_step} with train.steps {length.old_steps} '
          f'-> {length.new_steps}: {length.why}')
  if superseded:
    line += (f', so it goes on from the latest checkpoint at or before step {length.last}, '
             f'not the newest (steps {", ".join(map(str, superseded))} moved to '
             'checkpoints_superseded/')
    line += f'; {" and ".join(copies)} kept)' if copies else ')'
  return line
