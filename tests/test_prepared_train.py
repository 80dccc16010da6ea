"""Training from prepared datasets (data.source=prepared, jaxlab.data.mixture): a mixture
trains, is killed with -9 and resumes bit for bit, its realised proportions in the eval
records; a mixture's draws at the dataset level (weights, seeds, resumed state); lanes;
the refusals (one line, exit 2, before any compile); a changed manifest on resume; and
submit's multi-host check. Dataset a is made by `launch.py prepare`, b with
jaxlab.data.prepared's writer alone (tests/prepared_data.py)."""
import json
import shutil
import signal
import time

import numpy as np
import pytest

import prepared_data
from cli_runs import refused
from jaxlab.config import DataConfig
from jaxlab.data import make_lane_iterator, make_tokenizer, make_train_iterator, mixture
from jaxlab.data import pipeline
from test_train import inproc, launch, records, wait_for_step

# 60 steps, a checkpoint every 10, an eval every 20, every step logged.
RUN = ['train.steps=60', 'train.checkpoint_every=10', 'train.eval_every=20',
       'train.log_every=1']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  """Dataset a made by `launch.py prepare` from a .jsonl file (the whole chain: prepare ->
  train -> kill -9 -> resume), b by the format's writer alone."""
  from jaxlab.launch import cli
  root = tmp_path_factory.mktemp('prepared')
  source = root / 'a.jsonl'
  source.write_text(''.join(json.dumps({'text': t}) + '\n'
                            for t in prepared_data.texts(300, 0, prefix='A ')))
  assert cli.main(['prepare', str(source), '--tokenizer', 'byte', '--out', str(root / 'a'),
                   '--val-fraction', '0.1', '--shards', '2', '--workers', '1']) == 0
  b = prepared_data.write(root / 'b', prepared_data.texts(300, 1, words=60, prefix='B '))
  return root, root / 'a', b


def _mixture(a, b):
  return ['data.source=prepared', f'data.mixture={a}:0.7,{b}:0.3']


@pytest.fixture(scope='module')
def reference(data, tmp_path_factory):
  from jaxlab.launch import cli
  _, a, b = data
  workdir = tmp_path_factory.mktemp('ref')
  assert cli.main(['run', 'tiny', *_mixture(a, b), *RUN, f'train.workdir={workdir}']) == 0
  return workdir / 'tiny'


def _numbers(run_dir):
  """Every logged number that must not depend on interruptions (not timings)."""
  drop = ('tokens_per_sec', 'time', 'mfu', 'input_wait')
  return [{k: v for k, v in r.items() if k not in drop} for r in records(run_dir)]


def test_a_mixture_trains_and_resumes_bit_exactly_after_kill_9(data, reference, tmp_path,
                                                               capsys):
  _, a, b = data
  evals = [r for r in records(reference) if 'val_loss' in r]
  assert [r['step'] for r in evals] == [20, 40, 60]
  for r in evals:   # the realised proportions, logged at every evaluation
    assert r['mix/0/token_share'] + r['mix/1/token_share'] == pytest.approx(1)
    assert r['mix/0/documents'] + r['mix/1/documents'] > 0
    assert r['val_loss'] == pytest.approx(0.7 * r['val_loss/0'] + 0.3 * r['val_loss/1'])
  assert 0.6 < evals[-1]['mix/0/document_share'] < 0.8
  tokens = evals[-1]['mix/0/tokens'] + evals[-1]['mix/1/tokens']
  assert tokens == 60 * 4 * 33   # every row's tokens (seq_len + 1), counted once
  identity = json.loads((reference / 'data.json').read_text())
  assert [d['weight'] for d in identity['datasets']] == [0.7, 0.3]
  assert len(identity['datasets'][0]['manifest_sha256']) == 64

  args = ['run', 'tiny', *_mixture(a, b), *RUN]
  proc = launch(*args, workdir=tmp_path, wait=False)
  run_dir = tmp_path / 'tiny'
  wait_for_step(proc, run_dir, 11)
  while not (run_dir / 'checkpoints' / '10').is_dir():   # finalised (renamed into place)
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (run_dir / 'summary.json').exists() and records(run_dir)[-1]['step'] < 60
  rerun = inproc(capsys, *args, workdir=tmp_path)
  assert rerun.returncode == 0, rerun.stderr
  assert 'resuming' in rerun.stdout
  assert _numbers(run_dir) == _numbers(reference)


def test_a_changed_manifest_is_refused_on_resume_and_a_moved_dataset_is_not(data, reference,
                                                                            tmp_path):
  _, a, b = data
  a2 = shutil.copytree(a, tmp_path / 'a2')
  run_dir = shutil.copytree(reference, tmp_path / 'copy')
  config = json.loads((run_dir / 'config.json').read_text())
  config['data']['mixture'][0] = f'{a2}:0.7'
  (run_dir / 'config.json').write_text(json.dumps(config))
  proc = refused('run', str(run_dir))
  assert proc.returncode == 0 and 'already finished' in proc.stdout, proc.stderr
  manifest = json.loads((a2 / 'manifest.json').read_text())
  manifest['splits']['train']['tokens'][0] += 1
  (a2 / 'manifest.json').write_text(json.dumps(manifest))
  proc = refused('run', str(run_dir))
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(err) == 1, proc.stderr
  assert f'{a2} is another dataset' in err[0] and 'data.accept_changes=true' in err[0]


def test_mixture_draws_by_weight_per_seed_and_resumes(data):
  _, a, b = data
  cfg = mixture.resolve(DataConfig(source='prepared', mixture=(f'{a}:7', f'{b}:3'), seq_len=32))
  tok = make_tokenizer(cfg)
  docs = pipeline.train_documents(cfg, tok, tagged=True)
  drawn = [docs[i] for i in range(10_000)]
  share = np.bincount([k for k, _ in drawn]) / len(drawn)
  assert abs(share[0] - 0.7) < 0.02 and abs(share[1] - 0.3) < 0.02
  again = pipeline.train_documents(cfg, tok, tagged=True)
  assert all(np.array_equal(again[i][1], drawn[i][1]) for i in range(200))
  other = pipeline.train_documents(DataConfig(**{**cfg.__dict__, 'seed': 1}), tok, tagged=True)
  assert any(not np.array_equal(other[i][1], drawn[i][1]) for i in range(200))
  # A resumed iterator continues exactly, its counts included; batches keep their keys.
  it = make_train_iterator(cfg, tok, batch_size=4)
  for _ in range(5):
    assert sorted(next(it)) == ['segment_ids', 'tokens']
  state = json.loads(json.dumps(it.get_state()))
  ahead = [next(it)['tokens'] for _ in range(4)]
  resumed = make_train_iterator(cfg, tok, batch_size=4)
  resumed.set_state(state)
  assert all(np.array_equal(x, next(resumed)['tokens']) for x in ahead)
  assert resumed.realised() == it.realised()
  assert sum(it.realised()['tokens']) == 9 * 4 * 33
  # Lanes (context growth, data.packing=lanes) read prepared data and mixtures too.
  for lanes_cfg in (cfg, DataConfig(source='prepared', path=str(a), seq_len=32)):
    lanes = make_lane_iterator(lanes_cfg, make_tokenizer(lanes_cfg), lanes=2, seq_len=16)
    assert next(lanes)['tokens'].shape == (4, 17)


def _one_line(proc, *needles):
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(err) == 1 and err[0].startswith('error: '), proc.stderr
  for needle in needles:
    assert needle in err[0], err[0]


def test_refusals_are_one_line_before_any_compile(data, tmp_path):
  root, a, b = data
  _one_line(refused('run', 'tiny', 'data.files=/some/a.jsonl'), 'data.files=/some/a.jsonl',
            'data.source=files')
  _one_line(refused('run', 'tiny', f'data.path={a}'), 'data.path=', 'data.source=prepared')
  _one_line(refused('run', 'tiny', 'data.source=files', 'data.files=/x.txt',
                    f'data.mixture={a}:1'), 'data.mixture=', 'data.source=prepared')
  _one_line(refused('run', 'tiny', 'data.source=prepared'), 'data.path=DIR', 'data.mixture')
  _one_line(refused('run', 'tiny', 'data.source=prepared', f'data.path={a}',
                    f'data.mixture={a}:1,{b}:1'), 'not both')
  _one_line(refused('run', 'tiny', 'data.source=prepared', f'data.mixture={a}:0,{b}:1'),
            f"{a}:0", 'weight > 0')
  (tmp_path / 'empty').mkdir()
  _one_line(refused('run', 'tiny', 'data.source=prepared', f'data.path={tmp_path / "empty"}'),
            'is not a prepared dataset', 'launch.py prepare')
  other = shutil.copytree(b, tmp_path / 'other')
  manifest = json.loads((other / 'manifest.json').read_text())
  manifest['tokenizer'].update(spec='/tok.model', fingerprint='spm:0123')
  (other / 'manifest.json').write_text(json.dumps(manifest))
  _one_line(refused('run', 'tiny', 'data.source=prepared', f'data.mixture={a}:1,{other}:1'),
            str(a), str(other), 'spm:0123', 'one tokenizer')
  tok = _hf_tokenizer(tmp_path / 'tok')
  _one_line(refused('run', 'tiny', 'data.source=prepared', f'data.path={a}',
                    f'data.tokenizer={tok}'), f'data.tokenizer={str(tok)!r}', str(a),
            'drop data.tokenizer')
  # The model's vocabulary check reads the dataset's tokenizer.
  _one_line(refused('run', 'tiny', 'data.source=prepared', f'data.path={a}',
                    'model.vocab_size=100'), 'model.vocab_size=100', '257')


def _hf_tokenizer(path):
  """A tiny Hugging Face tokenizer.json (word level, BOS <s>): another fingerprint."""
  import tokenizers
  from tokenizers import models, pre_tokenizers
  tok = tokenizers.Tokenizer(models.WordLevel({'<s>': 0, '[UNK]': 1, 'a': 2}, unk_token='[UNK]'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  path.mkdir()
  tok.save(str(path / 'tokenizer.json'))
  (path / 'tokenizer_config.json').write_text(json.dumps({'bos_token': '<s>'}))
  return path


def test_submit_refuses_local_data_for_a_multi_host_run(data, tmp_path):
  _, a, b = data
  slurm = ['submit', '--target', 'slurm', '--dry-run', 'tiny', f'train.workdir={tmp_path}']
  prepared = ['data.source=prepared', f'data.path={a}']
  _one_line(refused(*slurm[:3], '--nodes', '2', *slurm[3:], *prepared),
            f'data.path={a} is local', '2 hosts', 'gs://', '--shared-dir')
  _one_line(refused(*slurm[:3], '--nodes', '2', *slurm[3:], 'data.source=files',
                    f'data.files={tmp_path}/c.txt'), 'data.files=', 'gs://')
  _one_line(refused(*slurm[:3], '--nodes', '2', *slurm[3:]), f'train.workdir={tmp_path}',
            'train.mirror_dir')
  # Marked shared (or on one node), the same run goes; the dry run says where data is from.
  proc = refused(*slurm[:3], '--nodes', '2', '--shared-dir', str(a.parent),
                 '--shared-dir', str(tmp_path), *slurm[3:], *_mixture(a, b))
  assert proc.returncode == 0, proc.stderr
  assert f'# data: a mixture of prepared datasets {a} (70%), {b} (30%)' in proc.stderr
  tpu = ['submit', '--target', 'tpu', '--tpu-name', 'x', '--zone', 'z', '--accelerator',
         'v5p-32', '--skip-compile-check', '--dry-run', 'tiny',
         'train.mirror_dir=gs://bucket/runs']
  _one_line(refused(*tpu, *prepared), f'data.path={a} is local', '4 hosts', 'gs://')
