"""The growth studies compare methods at equal FLOPs: a grown run's steps are sized so that
its small-model steps plus its big-model steps cost what scratch's steps cost, to within
one big-model step. Checked from the experiments' own overrides (nothing trains)."""
from __future__ import annotations

import dataclasses

import pytest

from jaxlab.config import load, load_module
from jaxlab.growth import plan
from jaxlab.models.flops import flops_per_token


def _flops(cfg) -> tuple[float, float]:
  """(training FLOPs, one big step's FLOPs) of a resolved config."""
  tps = cfg.train.batch_size * cfg.data.seq_len
  big = flops_per_token(cfg.model, cfg.data.seq_len) * tps
  if cfg.growth.method == 'none':
    return cfg.train.steps * big, big
  small = flops_per_token(plan.source_model(cfg), cfg.data.seq_len) * tps
  at = cfg.growth.at_tokens // tps
  return at * small + (cfg.train.steps - at) * big, big


@pytest.mark.parametrize('study', ['demo', 'gstack_vs_scratch', 'scaling_ladder',
                                   'scaling_ladder_predict'])
def test_grown_runs_spend_scratchs_flops(study):
  module = load_module(study)
  runs = module.runs(module.config())
  for label, overrides in runs.items():
    if not label.endswith(('scratch',)):
      continue
    scratch, _ = _flops(load(study, overrides))
    rung = label[:-len('scratch')]
    grown = [k for k in runs if k.startswith(rung) and k != label] if rung else \
        [k for k in runs if k != label]
    assert grown, label
    for other in grown:
      spent, step = _flops(load(study, runs[other]))
      assert abs(spent - scratch) <= step / 2 + 1e-6 * scratch, (other, spent / scratch)
