"""`launch.py compile` with the sequence split over mesh.context: ring attention compiled
for a TPU topology from this CPU host (libtpu, no TPU), and what it saves per chip. The
full-size table is bench/bench_context.py (README, "TPU memory by context")."""
from __future__ import annotations

import importlib.util

import pytest

from jaxlab import aot
from jaxlab import config as config_lib
from jaxlab.aot import targets

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                                  reason='needs libtpu: pip install -e ".[tpu]" (make test does)')

# tiny with a sequence long enough that attention's T x T scores dominate the temporaries
# (at 1024 tokens they do not: the step's temporaries were 52.6 vs 50.4 MB at context 1
# vs 2, attention alone 9.2 MB): 4 sequences of 4096 tokens on the 4 chips of tpu:v5p-8.
SHAPE = ('data.seq_len=4096', 'train.batch_size=4', 'train.eval_batches=0',
         'model.attention=xla', 'mesh.data=1')


def _train(context: int) -> dict:
  cfg = config_lib.load('tiny', [*SHAPE, f'mesh.fsdp={4 // context}', f'mesh.context={context}'])
  [row] = aot.check_run(cfg, targets.parse_target('tpu:v5p-8'), log=lambda line: None,
                        estimate=False)
  assert row['fits'] and row['mesh']['context'] == context
  return row


@needs_libtpu
def test_ring_attention_compiles_for_v5p_and_splits_attention_memory():
  # Same global batch (4 x 4096) and tokens per chip (4096) either way: context 1 holds one
  # sequence per chip and its whole 4096 x 4096 scores; context 2 holds two half sequences
  # per chip and runs the ring's (1024 x 1024) blocks, passing K/V between the chip pairs.
  one, two = _train(1), _train(2)
  ring = two['compiled']['train'].as_text()
  assert 'collective-permute' in ring and 'collective-permute' not in (
      one['compiled']['train'].as_text())
  temp_one, temp_two = one['memory']['train']['temp'], two['memory']['train']['temp']
  assert temp_two < 0.75 * temp_one, (temp_one, temp_two)
