"""A Config made runnable: the rules that need the model, the optimizer or the kernels,
which sit above jaxlab.config (the bottom layer checks what a config decides alone).

  Step Law        optim.lr=steplaw / train.batch=steplaw: lr, batch and steps from the
                  model's non-embedding parameter count (jaxlab.optim.step_law)
  muP             the base model must have whole sizes, and muP must know the optimizer's
                  family (jaxlab.models.parametrization)
  ring attention  under mesh.context > 1, model.attention needs a backend with a ring
                  block (jaxlab.kernels.dispatch)
  train.trainable its patterns must parse (jaxlab.optim.trainable)
  moments dtype   optim.moments_dtype needs an optimizer that can store its moment so
                  (jaxlab.optim.build.moments_dtype_kwargs)
  prepared data   data.path / data.mixture must be prepared datasets sharing one
                  tokenizer, which data.tokenizer becomes (jaxlab.data.mixture)

`train(cfg)` and every command of launch.py (run, sweep points, compile, grow, show)
resolve before anything compiles. Resolving is idempotent: every value it writes is a
function of fields it does not write.
"""
from __future__ import annotations

import dataclasses
import json
import sys

from jaxlab import config as config_lib
from jaxlab.config.checks import validate
from jaxlab.config.types import Config
from jaxlab.data import mixture
from jaxlab.kernels import dispatch
from jaxlab.models import parametrization
from jaxlab.optim import step_law, trainable
from jaxlab.optim.build import moments_dtype_kwargs


def resolve(cfg: Config) -> Config:
  """cfg checked by every rule and with Step Law's values written in; ConfigError (exit 2
  at the CLI) naming the key otherwise."""
  validate(cfg)
  if cfg.model.parametrization == 'mup':
    parametrization.base_model(cfg.model)
    parametrization.check_optimizer(cfg.model, cfg.optim.name)
  if cfg.mesh.context * cfg.mesh.dcn_context > 1:
    dispatch.check_ring_choice(cfg.model.attention)
  if cfg.train.trainable:
    trainable.parse(cfg.train.trainable)
  moments_dtype_kwargs(cfg.optim)   # optim.moments_dtype: the optimizer must store it
  if cfg.data.source == 'prepared':
    cfg = dataclasses.replace(cfg, data=mixture.resolve(cfg.data))
  return step_law.resolve(cfg)


def rebuild(requests: list[dict]) -> list[dict]:
  """[{'experiment': path, 'overrides': [...]}] -> [{'config': config.json's dict} or
  {'error': one line}]: what each experiment file gives today (the report's drift check,
  jaxlab.report.provenance, runs this in a process of its own: `python -m
  jaxlab.train.runnable`, requests as JSON on stdin, answers on stdout)."""
  out = []
  for req in requests:
    try:
      cfg = resolve(config_lib.load(req['experiment'], req.get('overrides', [])))
      out.append({'config': json.loads(json.dumps(cfg.to_dict()))})
    except Exception as err:   # noqa: BLE001 -- any failure is the answer for this request
      out.append({'error': f'{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}'})
  return out


if __name__ == '__main__':
  print(json.dumps(rebuild(json.load(sys.stdin))))
