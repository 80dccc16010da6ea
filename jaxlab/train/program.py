"""Everything jitted that a run needs, built from a Config and a mesh in one place:
model, optimizer and schedule, the state's abstract shapes and shardings, and the
train / eval steps. The loop, the benchmark and (later) growth events all build it here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import optax

from jaxlab.config import Config
from jaxlab.models import Transformer
from jaxlab.optim import make_optimizer, make_schedule
from jaxlab.parallel import batch_sharding
from jaxlab.train.state import init_state, state_shardings
from jaxlab.train.step import make_eval_step, make_train_step


@dataclasses.dataclass(frozen=True)
class Program:
  cfg: Config
  model: Transformer
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  abstract_state: Any        # TrainState of ShapeDtypeStructs carrying their shardings
  shardings: Any             # TrainState of NamedShardings
  batch_sharding: Any
  train_step: Callable       # (state, batch) -> (state, metrics); donates state
  eval_step: Callable        # (params, batch) -> (sum of token losses, token count)

  def init_state(self):
    return init_state(self.model, self.tx, self.cfg.data.seq_len, self.cfg.train.seed,
                      self.shardings)


def build_program(cfg: Config, mesh) -> Program:
  model = Transformer(cfg.model)
  schedule = make_schedule(cfg.optim, cfg.train.steps)
  tx = make_optimizer(cfg.optim, cfg.model, schedule)
  abstract, shardings = state_shardings(model, tx, cfg.data.seq_len, mesh)
  in_sharding = batch_sharding(mesh)
  return Program(
      cfg=cfg, model=model, tx=tx, schedule=schedule, abstract_state=abstract,
      shardings=shardings, batch_sharding=in_sharding,
      train_step=make_train_step(model, tx, schedule, shardings, in_sharding),
      eval_step=make_eval_step(model, shardings.params, in_sharding))
