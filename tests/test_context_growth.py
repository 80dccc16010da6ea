"""Context-length growth inside a run (growth.seq_lens): the plan, its config checks, the
lane packing that re-packs at a new length with nothing skipped or repeated, and the run
end to end through the CLI on the tiny experiment (seq 8 -> 32 after 8 of 20 steps)."""
import json

import numpy as np
import pytest

from jaxlab.config import ConfigError, load
from jaxlab.config.types import DataConfig
from jaxlab.data import make_lane_iterator, make_tokenizer
from jaxlab.data.pipeline import encoder, train_documents
from test_growth_run import copy_keeping, events_of, launch, steps_of, trajectory

TOKENS_PER_STEP = 4 * 32                    # tiny: batch 4 x seq_len 32, at every length
CONTEXT = ['growth.seq_lens=8,32', f'growth.seq_at_tokens={8 * TOKENS_PER_STEP}',
           'growth.rope_theta=1000,10000', 'model.rope_theta=10000', 'train.log_every=1',
           'train.keep_checkpoints=10', 'train.eval_positions=true']


# ----------------------------------------------------------------------------- plan

def test_plan_has_a_phase_per_length_with_its_rope_base():
  from jaxlab.growth import phases
  cfg = load('tiny', CONTEXT)
  plan = phases(cfg)
  assert [(p.start_step, p.event, p.length(cfg), p.rows(cfg), p.model.rope_theta)
          for p in plan] == [(0, None, 8, 16, 1000.0), (8, 'context', 32, 4, 10000.0)]
  assert plan[-1].model == cfg.model      # the last phase is the run's model


@pytest.mark.parametrize('overrides,match', [
    (['growth.seq_lens=8,16'], r'ends with 16; the last length is the run\'s data.seq_len=32'),
    (['growth.seq_lens=16,8,32', 'growth.seq_at_tokens=256,512'], 'must increase strictly'),
    (['growth.seq_lens=12,32', 'growth.seq_at_tokens=256'], 'must divide data.seq_len=32'),
    (['growth.seq_lens=8,32'], 'seq_at_tokens has 0 entries; it needs one per length'),
    (['growth.seq_lens=8,32', 'growth.seq_at_tokens=99999'], r'within \(0, 2560\)'),
    (['growth.seq_lens=8,32', 'growth.seq_at_tokens=256', 'growth.rope_theta=1e3'],
     'rope_theta has 1 entries; it needs one per length'),
    (['growth.seq_lens=8,32', 'growth.seq_at_tokens=256', 'growth.rope_theta=1e3,2e4'],
     r'ends with 20000, but the final model\'s model.rope_theta=10000'),
    (['growth.seq_at_tokens=256'], 'need growth.seq_lens'),
    (['growth.seq_lens=8,32', 'growth.seq_at_tokens=256', 'model.n_layers=4',
      'growth.method=stack', 'growth.factor=2', 'growth.at_tokens=512'],
     'context growth and model growth in one run are not supported'),
    (['growth.seq_lens=8,16,32', 'growth.seq_at_tokens=200,250'],
     'puts two length changes at the same step'),
])
def test_bad_context_schedules_are_one_line_errors(overrides, match):
  from jaxlab.growth import phases
  with pytest.raises(ConfigError, match=match):
    phases(load('tiny', overrides))


# ----------------------------------------------------------------------------- lanes

@pytest.fixture(scope='module')
def lane_setup():
  cfg = DataConfig(seq_len=64)
  tokenizer = make_tokenizer(cfg)
  docs = train_documents(cfg, tokenizer)
  encode = encoder(tokenizer)
  return cfg, tokenizer, lambda i: encode(docs[i])['tokens'] if len(docs[i]) else None


def _lane_streams(batches, lanes):
  """Per lane: its rows' tokens and segment ids, concatenated in order."""
  toks = [[] for _ in range(lanes)]
  segs = [[] for _ in range(lanes)]
  for b in batches:
    per_lane = len(b['tokens']) // lanes
    for lane in range(lanes):
      for row in range(lane * per_lane, (lane + 1) * per_lane):
        toks[lane].append(b['tokens'][row])
        segs[lane].append(b['segment_ids'][row])
  return toks, segs


def test_lanes_repack_at_each_length_with_nothing_skipped_or_repeated(lane_setup):
  cfg, tokenizer, doc = lane_setup
  lanes = 3
  it = make_lane_iterator(cfg, tokenizer, lanes=lanes, seq_len=16)
  batches = []
  for length, n in ((16, 3), (64, 2), (32, 2), (64, 1)):   # grows, and shrinks too
    it.set_seq_len(length)
    for _ in range(n):
      b = next(it)
      assert b['tokens'].shape == (lanes * 64 // length, length + 1)
      batches.append(b)
  toks, segs = _lane_streams(batches, lanes)
  for lane in range(lanes):
    got = np.concatenate(toks[lane])
    # Lane `lane` reads documents lane, lane + 3, ... whole and in order ([BOS] + text).
    want, k = [], 0
    while sum(map(len, want)) < len(got):
      d = doc(lane + k * lanes)
      if d is not None:
        want.append(d)
      k += 1
    np.testing.assert_array_equal(got, np.concatenate(want)[:len(got)])
    # A new segment starts exactly where a row starts or a document starts.
    starts = set(np.cumsum([0] + [len(d) for d in want]).tolist())
    pos = 0
    for row_t, row_s in zip(toks[lane], segs[lane]):
      assert row_s[0] == 1 and np.all(np.diff(row_s) >= 0)
      new = pos + np.flatnonzero(np.diff(row_s)) + 1
      assert set(new.tolist()) == {s for s in starts if pos < s < pos + len(row_t)}
      pos += len(row_t)


def test_lane_state_resumes_at_another_length(lane_setup):
  cfg, tokenizer, _ = lane_setup
  it = make_lane_iterator(cfg, tokenizer, lanes=2, seq_len=16)
  for _ in range(5):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  it.set_seq_len(64)
  want = [next(it) for _ in range(3)]
  again = make_lane_iterator(cfg, tokenizer, lanes=2, seq_len=64)
  again.set_state(state)
  got = [next(again) for _ in range(3)]
  for w, g in zip(want, got):
    np.testing.assert_array_equal(w['tokens'], g['tokens'])
    np.testing.assert_array_equal(w['segment_ids'], g['segment_ids'])
  other = make_lane_iterator(cfg, tokenizer, lanes=3, seq_len=64)
  with pytest.raises(ValueError, match='different pipeline'):
    other.set_state(state)


# ----------------------------------------------------------------------------- a run

@pytest.fixture(scope='module')
def grown(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('context')
  proc = launch('run', 'tiny', *CONTEXT, workdir=workdir)
  assert proc.returncode == 0, proc.stderr
  assert 'growth at step 8: seq_len 8 -> 32, rope_theta 1000 -> 10000 (context)' in proc.stdout
  return workdir / 'tiny'


def test_context_growth_counts_tokens_and_flops_at_each_length(grown):
  import dataclasses
  from jaxlab.models.flops import flops_per_token
  from jaxlab.optim import make_schedule
  cfg = load('tiny', CONTEXT)
  short = flops_per_token(dataclasses.replace(cfg.model, rope_theta=1000.0), 8)
  full = flops_per_token(cfg.model, 32)
  assert full > short                       # attention FLOPs grow with the length
  recs = steps_of(grown)
  assert [r['step'] for r in recs] == list(range(1, 21))
  base = make_schedule(cfg.optim, cfg.train.steps)
  for prev, r in zip([{'tokens': 0, 'flops': 0.0}] + recs, recs):
    assert r['tokens'] - prev['tokens'] == TOKENS_PER_STEP
    per_token = short if r['step'] <= 8 else full
    assert r['flops'] - prev['flops'] == pytest.approx(TOKENS_PER_STEP * per_token, rel=1e-12)
    # The lr schedule carries on across the change (no restart, no second warmup).
    assert r['lr'] == pytest.approx(float(base(r['step'] - 1)), rel=1e-6)
  (event,) = events_of(grown)
  assert (event['event'], event['step'], event['tokens']) == ('context', 8, 8 * TOKENS_PER_STEP)
  assert (event['seq_len_before'], event['seq_len_after']) == (8, 32)
  assert (event['rope_theta_before'], event['rope_theta_after']) == (1000.0, 10000.0)
  summary = json.loads((grown / 'summary.json').read_text())
  assert summary['flops_per_token'] == full and summary['tokens'] == 20 * TOKENS_PER_STEP
  # train.eval_positions: the last evaluation also splits the val loss by position.
  buckets = {k: v for k, v in recs[-1].items() if k.startswith('val_loss_pos/')}
  assert list(buckets) == [f'val_loss_pos/{k}' for k in ('0-1', '2-3', '4-7', '8-15', '16-31')]
  assert all(0 < v < 10 for v in buckets.values())
  assert not any(k.startswith('val_loss_pos/') for r in recs[:-1] for k in r)


def test_position_buckets_split_the_val_loss_exactly():
  import jax
  import jax.numpy as jnp
  from jaxlab.models import Transformer
  from jaxlab.train.step import loss_terms, position_edges, position_terms, token_losses
  cfg = load('tiny', [])
  model = Transformer(cfg.model)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))['params']
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 200, (3, 33)).astype(np.int32)
  # Pieces of 5, 20 and 8 tokens; a padded tail; one row a single piece.
  segments = np.array([[1] * 5 + [2] * 20 + [3] * 8, [1] * 33, [1] * 25 + [0] * 8], np.int32)
  batch = {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.asarray(segments)}
  edges = position_edges(32)
  assert edges == (0, 2, 4, 8, 16, 32)
  sums, counts = jax.device_get(position_terms(model, params, batch, edges))
  total, count = jax.device_get(loss_terms(model, params, batch))
  assert counts.sum() == count and sums.sum() == pytest.approx(float(total), rel=1e-6)
  losses, mask, _ = jax.device_get(token_losses(model, params, batch))
  want_s, want_c = np.zeros(5), np.zeros(5)
  for b in range(3):
    pos = 0
    for t in range(32):
      pos = 0 if t == 0 or segments[b, t] != segments[b, t - 1] else pos + 1
      if mask[b, t]:
        k = max(i for i in range(5) if edges[i] <= pos)
        want_s[k] += losses[b, t]
        want_c[k] += 1
  np.testing.assert_array_equal(counts, want_c)
  np.testing.assert_allclose(sums, want_s, rtol=1e-6)


@pytest.mark.parametrize('keep', [5, 10], ids=['before', 'after'])
def test_resume_on_either_side_of_the_change_reproduces_the_run(grown, tmp_path, keep):
  run_dir = tmp_path / 'tiny'
  copy_keeping(grown, run_dir, keep)
  proc = launch('run', 'tiny', *CONTEXT, workdir=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert f'from step {keep}' in proc.stdout
  assert ('growth at step 8' in proc.stdout) == (keep < 8)
  assert trajectory(run_dir) == trajectory(grown)


# ----------------------------------------------------------------------------- report

def test_position_table_statistics_match_hand_computed_intervals():
  import pathlib
  from jaxlab.report import positions
  from jaxlab.rundir.read import Run
  values = {'scratch': [(2.0, 3.0), (2.2, 3.1), (2.1, 3.2)],
            'ctx': [(1.9, 3.3), (2.0, 3.5), (2.0, 3.4)]}
  runs = [Run(label=f'{m}/seed{k}', dir=pathlib.Path('.'), config={}, summary=None,
              metrics=[{'step': 5, 'val_loss': 2.5},
                       {'step': 10, 'val_loss_pos/0-63': a, 'val_loss_pos/64-127': b}])
          for m, vs in values.items() for k, (a, b) in enumerate(vs)]
  assert positions.has_stats(runs)
  rows = {(r['method'], r['bucket']): r for r in positions.summary_rows(runs, 'scratch')}
  t = 4.302652729911275                 # t_{0.975, 2}
  # scratch, 0-63: mean 2.1, sd 0.1 -> half 4.3027 x 0.1 / sqrt(3) = 0.24841
  assert rows['scratch', '0-63']['loss'].estimate == pytest.approx(2.1, abs=1e-12)
  assert rows['scratch', '0-63']['loss'].half == pytest.approx(t * 0.1 / 3 ** 0.5, rel=1e-9)
  assert 'diff' not in rows['scratch', '0-63']
  # ctx - scratch, 0-63: (-0.1, -0.2, -0.1): mean -0.13333, sd 0.057735, half 0.14342,
  # which includes 0; 64-127: (0.3, 0.4, 0.2): mean 0.3, sd 0.1, half 0.24841 -> resolved.
  near, far = rows['ctx', '0-63']['diff'], rows['ctx', '64-127']['diff']
  assert near.estimate == pytest.approx(-0.4 / 3, abs=1e-12)
  assert near.half == pytest.approx(t * (1 / 300) ** 0.5 / 3 ** 0.5, rel=1e-9)
  assert not near.resolved
  assert far.estimate == pytest.approx(0.3, abs=1e-12) and far.resolved
  text = positions.render(positions.summary_rows(runs, 'scratch'), 'scratch')
  assert '| − scratch | -0.1333 ± 0.1434 (not resolved) | +0.3000 ± 0.2484 |' in text


# ----------------------------------------------------------------------------- lanes at one length

def test_lane_packing_at_one_length_runs_and_resumes(tmp_path):
  # data.packing=lanes: a run at one length fed as a context-growth run is (its baseline in
  # experiments/context_growth.py), so seed k of both reads the same lane streams.
  from jaxlab.data import uses_lanes
  assert uses_lanes(load('tiny', ['data.packing=lanes'])) and not uses_lanes(load('tiny'))
  assert uses_lanes(load('tiny', CONTEXT))
  with pytest.raises(ConfigError, match='data.packing'):
    load('tiny', ['data.packing=stream'])
  lanes, rows = tmp_path / 'lanes', tmp_path / 'rows'
  for workdir, extra in ((lanes, ['data.packing=lanes']), (rows, [])):
    proc = launch('run', 'tiny', 'train.steps=10', 'train.log_every=1', *extra, workdir=workdir)
    assert proc.returncode == 0, proc.stderr
  first = trajectory(lanes / 'tiny')
  assert first[0]['loss'] != trajectory(rows / 'tiny')[0]['loss']   # other batches
  again = tmp_path / 'again'
  copy_keeping(lanes / 'tiny', again / 'tiny', 5)
  proc = launch('run', 'tiny', 'train.steps=10', 'train.log_every=1', 'data.packing=lanes',
                workdir=again)
  assert proc.returncode == 0, proc.stderr
  assert 'from step 5' in proc.stdout
  assert trajectory(again / 'tiny') == first
