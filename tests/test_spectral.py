"""The spectral diagnostic: sigma_max per matrix and layer against numpy's SVD, logged by
the loop every train.spectral_every steps (through a growth event) and plotted by report."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxlab import report
from jaxlab.config import ConfigError, load
from jaxlab.models import Transformer, schema
from jaxlab.report import spectral
from jaxlab.rundir.records import parse_sigma_key
from jaxlab.train import measure

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
TOKENS_PER_STEP = 4 * 32   # tiny: batch 4 x seq_len 32


@pytest.fixture(scope='module')
def params():
  model = Transformer(load('tiny').model)
  init = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))['params'])
  return nn.unbox(init(jax.random.key(0)))


TINY = load('tiny').model
_sigma = jax.jit(measure.top_singular_values, static_argnums=1)


@pytest.mark.parametrize('overrides', [[], ['model.tie_embeddings=true'], ['model.qk_norm=true'],
                                       ['model.n_kv_heads=1', 'model.head_dim=8']])
def test_layer_stack_matrices_are_the_hidden_ones(overrides):
  """The report reads a sigma_max key with a layer index as a hidden matrix (both dims
  scale with width) without building the model (jaxlab.report.spectral.final_hidden):
  that holds when every matrix under the layer stack has the 'hidden' role and no other
  matrix does, which the parameter schema says here."""
  cfg = load('tiny', overrides).model
  for path, s in schema.specs(cfg).items():
    if s.is_matrix:
      assert s.stacked == (s.role == 'hidden'), (overrides, path, s.role)


def sigma_fn(p):
  return _sigma(p, TINY)


def numpy_sigma(w_IxO):
  return np.linalg.svd(np.asarray(w_IxO, np.float64), compute_uv=False)[0]


def test_values_match_numpy_svd_per_layer_and_key_names(params):
  p = params
  got = sigma_fn(p)
  attn, mlp = p['layers']['attn'], p['layers']['mlp']
  L, D, H, K = attn['wq'].shape
  want = {'sigma_max/embed.embedding': numpy_sigma(p['embed']['embedding']),   # V x D
          'sigma_max/head.kernel': numpy_sigma(p['head']['kernel'])}           # D x V
  for i in range(L):
    want.update({
        f'sigma_max/attn.wq/{i}': numpy_sigma(attn['wq'][i].reshape(D, H * K)),
        f'sigma_max/attn.wk/{i}': numpy_sigma(attn['wk'][i].reshape(D, -1)),
        f'sigma_max/attn.wv/{i}': numpy_sigma(attn['wv'][i].reshape(D, -1)),
        f'sigma_max/attn.wo/{i}': numpy_sigma(attn['wo'][i].reshape(H * K, D)),
        f'sigma_max/mlp.w_gate/{i}': numpy_sigma(mlp['w_gate'][i]),
        f'sigma_max/mlp.w_up/{i}': numpy_sigma(mlp['w_up'][i]),
        f'sigma_max/mlp.w_down/{i}': numpy_sigma(mlp['w_down'][i])})
  assert set(got) == set(want)   # norm scales (vectors) have no key
  # A backward-stable float32 SVD moves sigma_max by at most ~n * eps32 * sigma_max
  # (Weyl), n <= 257 here: < 2e-5 relative; measured ~1e-7. float64 numpy is the truth.
  for k in want:
    np.testing.assert_allclose(float(got[k]), want[k], rtol=2e-5, err_msg=k)
  # The grouping matters: wo read as H x (K*D) would give another value.
  assert abs(numpy_sigma(attn['wo'][0].reshape(H, K * D)) - want['sigma_max/attn.wo/0']) > 1e-3


def test_each_layer_slice_is_its_own_matrix_and_no_head_no_key(params):
  p = {k: v for k, v in params.items() if k != 'head'}   # as under tied embeddings
  base = sigma_fn(p)
  layers = jax.tree.map(lambda x: x, p['layers'])
  layers['mlp']['w_up'] = layers['mlp']['w_up'].at[1].multiply(3.0)
  layers['attn']['wo'] = layers['attn']['wo'].at[0].set(0.0)
  got = sigma_fn({**p, 'layers': layers})
  np.testing.assert_allclose(got['sigma_max/mlp.w_up/1'], 3 * base['sigma_max/mlp.w_up/1'],
                             rtol=1e-6)
  assert got['sigma_max/mlp.w_up/0'] == base['sigma_max/mlp.w_up/0']
  assert got['sigma_max/attn.wo/0'] == 0 and got['sigma_max/attn.wo/1'] > 0
  assert 'sigma_max/head.kernel' not in got and 'sigma_max/embed.embedding' in got


def test_negative_spectral_every_is_rejected():
  with pytest.raises(ConfigError, match='train.spectral_every=-1 must be >= 0'):
    load('tiny', ['train.spectral_every=-1'])


def test_run_logs_sigma_every_k_steps_through_growth_and_report_plots_it(tmp_path):
  from jaxlab.train.loop import train
  # 2 -> 4 layers at step 8; logs every 3 steps, at 10 (eval_every, though no eval
  # batches) and 8 (growth), sigma every 4 and at the end.
  cfg = load('tiny', ['model.n_layers=4', 'growth.method=stack', 'growth.factor=2',
                      f'growth.at_tokens={8 * TOKENS_PER_STEP}', 'train.steps=13',
                      'train.log_every=3', 'train.spectral_every=4', 'train.checkpoint_every=0',
                      'train.eval_batches=0',
                      f'train.workdir={tmp_path}'])
  train(cfg)
  run_dir = tmp_path / cfg.name
  lines = [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]
  recs = [r for r in lines if 'event' not in r]
  assert [r['step'] for r in recs] == [3, 4, 6, 8, 9, 10, 12, 13]
  layers = {r['step']: sorted({parse_sigma_key(k)[1] for k in r if k.startswith('sigma_max/')}
                              - {None}) for r in recs}
  # Step 8 is read before the growth event (2 layers), 12 and 13 after it (4 layers).
  assert layers == {3: [], 4: [0, 1], 6: [], 8: [0, 1], 9: [], 10: [], 12: [0, 1, 2, 3],
                    13: [0, 1, 2, 3]}
  for r in recs:   # every record stays a full log record (report, progress line, resume)
    assert 'loss' in r and 'tokens' in r and 'flops' in r
    assert all(v > 0 for k, v in r.items() if k.startswith('sigma_max/'))
  assert len([k for k in recs[-1] if k.startswith('sigma_max/')]) == 7 * 4 + 2

  md = report.write_report(run_dir).read_text()
  assert (run_dir / 'spectral.png').read_bytes()[:8] == PNG_MAGIC
  assert '## Spectral norms' in md and '![spectral norms](spectral.png)' in md
  row = next(line for line in md.splitlines() if line.startswith(f'| {cfg.name} | 13 |'))
  w_up = [recs[-1][f'sigma_max/mlp.w_up/{i}'] for i in range(4)]
  assert f'{sum(w_up) / 4:.3g} / {max(w_up):.3g}' in row


def test_sweep_report_table_and_plot(tmp_path):
  def run(name, scale, n_layers):
    d = tmp_path / name
    d.mkdir()
    (d / 'config.json').write_text(json.dumps({'name': name}))
    recs = [{'step': 10, 'loss': 3.0}]   # a log step without sigma keys
    for step in (20, 40):
      rec = {'step': step, 'loss': 2.0, 'sigma_max/embed.embedding': scale * step}
      rec.update({f'sigma_max/attn.wq/{i}': scale * (step + i) for i in range(n_layers)})
      recs.append(rec)
    (d / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
  run('narrow', 1.0, 2)
  run('wide', 0.5, 3)
  assert spectral.summary_rows(report.load_runs(tmp_path)) == [
      {'run': 'narrow', 'step': 40, 'sigma': {'attn.wq': (40.5, 41.0),
                                              'embed.embedding': (40.0, 40.0)}},
      {'run': 'wide', 'step': 40, 'sigma': {'attn.wq': (20.5, 21.0),
                                            'embed.embedding': (20.0, 20.0)}}]
  md = report.write_report(tmp_path).read_text()
  assert '| run | step | attn.wq | embed.embedding |' in md
  assert '| narrow | 40 | 40.5 / 41 | 40 |' in md and '| wide | 40 | 20.5 / 21 | 20 |' in md
  assert (tmp_path / 'spectral.png').read_bytes()[:8] == PNG_MAGIC
