"""Growing pretrained Hugging Face checkpoints (SOLAR / Yi layer maps, LLaMA-Pro block
expansion), training part of a model (train.trainable), and the end-to-end flow the README
walks through: import -> continued pretraining on jsonl -> LLaMA-Pro growth with frozen old
blocks -> export -> transformers' from_pretrained."""
import dataclasses
import json
import pathlib

import jax
import numpy as np
import optax
import pytest

pytest.importorskip('transformers')

import hf_models as H  # noqa: E402
from jaxlab import growth  # noqa: E402
from jaxlab.config import ConfigError, ModelConfig, OptimConfig, parse_ranges  # noqa: E402
from jaxlab.growth.depth import insert_every  # noqa: E402
from jaxlab.interop import hf  # noqa: E402
from jaxlab.models import schema  # noqa: E402
from jaxlab.optim import make_optimizer, trainable  # noqa: E402


def _tensors(path) -> dict:
  from safetensors.numpy import load_file
  out = {}
  for f in sorted(pathlib.Path(path).glob('*.safetensors')):
    out.update(load_file(f))
  return out


def _layer_tensors(tensors: dict, layer: int) -> dict:
  prefix = f'model.layers.{layer}.'
  return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def test_solar_layer_map_copies_the_named_layers(tmp_path):
  """SOLAR's depth up-scaling at 4 -> 6 layers (copy A without its last layer, copy B
  without its first, as 32 -> 48 drops 8): every target layer is its source layer bit for
  bit, by Hugging Face name, and the rest of the model is unchanged."""
  src_dir = H.make_model(tmp_path / 'src', num_hidden_layers=4)
  src, params = hf.load(src_dir)
  layers = list(parse_ranges('0-2,1-3', '--layers'))
  assert layers == [0, 1, 2, 1, 2, 3]
  dst = dataclasses.replace(src, n_layers=len(layers))
  grown = growth.grow(params, src, dst, 'layers', layers=layers)
  hf.save(grown, dst, tmp_path / 'dst')
  a, b = _tensors(src_dir), _tensors(tmp_path / 'dst')
  assert json.loads((tmp_path / 'dst' / 'config.json').read_text())['num_hidden_layers'] == 6
  for i, j in enumerate(layers):
    src_layer, dst_layer = _layer_tensors(a, j), _layer_tensors(b, i)
    assert sorted(src_layer) == sorted(dst_layer) and len(src_layer) == 9
    assert all(np.array_equal(src_layer[k], dst_layer[k]) for k in src_layer), (i, j)
  for k in ('model.embed_tokens.weight', 'model.norm.weight', 'lm_head.weight'):
    assert np.array_equal(a[k], b[k])


def test_llama_pro_expansion_keeps_the_function_exactly(tmp_path):
  """LLaMA-Pro: after every block a copy of it with o_proj and down_proj zeroed. jaxlab's
  logits are bit for bit the source's, and so are transformers' on the exported model."""
  src_dir = H.make_model(tmp_path / 'src')
  src, params = hf.load(src_dir)
  layers = insert_every(src.n_layers, 1)
  assert layers == [0, 0, 1, 1] and insert_every(32, 4)[:6] == [0, 1, 2, 3, 3, 4]
  assert len(insert_every(32, 4)) == 40
  dst = dataclasses.replace(src, n_layers=len(layers))
  grown = growth.grow(params, src, dst, 'zero', layers=layers)
  t = np.random.RandomState(0).randint(0, 128, (2, 16))
  assert np.array_equal(H.jax_logits(dst, grown, t), H.jax_logits(src, params, t))
  hf.save(grown, dst, tmp_path / 'dst')
  assert np.array_equal(H.hf_logits(tmp_path / 'dst', t), H.hf_logits(src_dir, t))
  b = _tensors(tmp_path / 'dst')
  assert growth.new_layers(src, dst, 'zero', layers) == [False, True, False, True]
  for i in (1, 3):
    new = _layer_tensors(b, i)
    assert not new['self_attn.o_proj.weight'].any() and not new['mlp.down_proj.weight'].any()
    assert np.array_equal(new['self_attn.q_proj.weight'],
                          _layer_tensors(b, i - 1)['self_attn.q_proj.weight'])


# ------------------------------------------------------------------------- train.trainable

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=2, d_ff=64)


def test_trainable_patterns_resolve_to_params_and_rows():
  specs = schema.specs(CFG)
  table = trainable.resolve('layers[1-2]/mlp/*,final_norm/*,head/kernel', CFG, None, specs)
  assert table[('layers', 'mlp', 'w_up')] == (1, 2)
  assert table[('layers', 'attn', 'wq')] == ()
  assert table[('final_norm', 'scale')] is trainable.ALL
  assert table[('embed', 'embedding')] == ()
  every = trainable.resolve('layers/*', CFG, None, specs)
  assert every[('layers', 'attn', 'wq')] is trainable.ALL and every[('head', 'kernel')] == ()
  assert trainable.resolve('new', CFG, [False, True, False], specs)[('layers', 'mlp',
                                                                    'w_down')] == (1,)
  with pytest.raises(ConfigError, match="'embd/\\*' selects no param"):
    trainable.resolve('embd/*', CFG, None, specs)
  with pytest.raises(ConfigError, match='names layers \\[5\\]'):
    trainable.resolve('layers[5]', CFG, None, specs)
  with pytest.raises(ConfigError, match="this run has no growth"):
    trainable.resolve('new', CFG, None, specs)
  with pytest.raises(ConfigError, match='layers\\[RANGES\\]'):
    trainable.parse('layers[0-1]mlp')


def test_frozen_params_keep_their_bits_and_get_no_optimizer_state():
  """10 AdamW steps with layer 1 and the final norm trainable: every frozen param (and
  frozen layer row) is unchanged bit for bit; the optimizer state holds moments for the
  trainable entries only (one row of each scanned param, the final norm), none for the
  embedding or head; and the trainable entries move as AdamW on them alone."""
  import flax.linen as nn
  from jaxlab.models import Transformer
  specs = schema.specs(CFG)
  table = trainable.resolve('layers[1],final_norm/*', CFG, None, specs)
  ocfg = OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0, grad_clip=0.0,
                     schedule='constant')
  tx = make_optimizer(ocfg, CFG, optax.constant_schedule(ocfg.lr), trainable=table)
  t = np.random.RandomState(0).randint(0, 64, (4, 16))
  params0 = nn.unbox(Transformer(CFG).init(jax.random.key(0), t)['params'])

  def loss(p):
    logits = Transformer(CFG).apply({'params': p}, t[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, t[:, 1:]).mean()

  def sub(p):   # the trainable entries alone
    return {'layers': jax.tree.map(lambda x: x[1:2], p['layers']), 'final_norm': p['final_norm']}

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s
  ref_tx = optax.adamw(ocfg.lr, ocfg.b1, ocfg.b2, ocfg.eps, weight_decay=0.0)

  @jax.jit
  def ref_step(p, s):
    u, s = ref_tx.update(sub(jax.grad(loss)(p)), s, sub(p))
    new = optax.apply_updates(sub(p), u)
    out = dict(p, final_norm=new['final_norm'])
    out['layers'] = jax.tree.map(lambda x, y: x.at[1:2].set(y), p['layers'], new['layers'])
    return out, s

  p, s = params0, tx.init(params0)
  n_state = sum(x.size for x in jax.tree.leaves(s) if x.ndim)
  n_trainable = sum(x.size for x in jax.tree.leaves(sub(params0)))
  assert n_state == 2 * n_trainable   # Adam's mu and nu, nothing for frozen params
  rp, rs = params0, ref_tx.init(sub(params0))
  for _ in range(10):
    p, s = step(p, s)
    rp, rs = ref_step(rp, rs)
  for name in ('embed', 'head'):
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p[name]),
                                                    jax.tree.leaves(params0[name])))
  for a, b in zip(jax.tree.leaves(p['layers']), jax.tree.leaves(params0['layers'])):
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2])
    assert not np.array_equal(a[1], b[1])
  # The two programs fuse differently: measured up to 1.1e-7 apart after 10 steps (Adam's
  # normalised step amplifies the float32 rounding of small gradients); a wrong row, a
  # moment of a frozen row or clipping over frozen gradients moves entries by ~lr = 1e-2.
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(rp)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------- end to end

@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """A SmolLM2-style directory: a tiny Llama (GQA) and its tokenizer, as downloaded."""
  d = tmp_path_factory.mktemp('smollm')
  H.make_tokenizer(d, vocab_size=280)
  H.make_model(d, vocab_size=288, hidden_size=32, intermediate_size=64, num_attention_heads=2,
               num_key_value_heads=1, bos_token_id=0, eos_token_id=1)
  return d


def test_readme_flow_end_to_end(pretrained, tmp_path, capsys):
  """The README walk-through on a tiny model, in-process through the CLI: continued
  pretraining on jsonl (model.init=hf:DIR), LLaMA-Pro growth with train.trainable=new,
  training the grown run, export, and transformers loading the export to the same logits;
  the old blocks (frozen) come out bit for bit as they went in."""
  from jaxlab.launch.cli import main
  corpus = tmp_path / 'corpus.jsonl'
  rng = np.random.RandomState(0)
  words = H.TEXT.split()
  corpus.write_text(''.join(json.dumps({'text': ' '.join(rng.choice(words, 30))}) + '\n'
                            for _ in range(60)))
  work = tmp_path / 'runs'
  data = ['data.source=files', f'data.files={corpus}', 'data.seq_len=32', 'train.batch_size=4',
          'train.eval_batches=1', 'train.eval_every=0', 'train.checkpoint_every=0',
          f'train.workdir={work}', f'data.data_dir={tmp_path / "cache"}']
  assert main(['run', 'tiny', f'model.init=hf:{pretrained}', 'train.steps=2', 'name=cpt',
               *data]) == 0
  cpt = json.loads((work / 'cpt' / 'config.json').read_text())
  assert cpt['data']['tokenizer'] == str(pretrained) and cpt['model']['vocab_size'] == 288
  assert main(['grow', '--from', f'hf:{pretrained}', '--method', 'zero', '--insert-every', '1',
               '--experiment', 'tiny', '--out', str(work / 'pro'), 'train.trainable=new',
               'train.steps=3', *data]) == 0
  pro = json.loads((work / 'pro' / 'config.json').read_text())
  assert pro['model']['n_layers'] == 4 and pro['train']['trainable'] == 'layers[1,3]'
  assert main(['run', str(work / 'pro')]) == 0
  out = tmp_path / 'export'
  assert main(['export', str(work / 'pro'), '--format', 'hf', '--out', str(out),
               '--max-shard-size', '60KB']) == 0
  assert {'tokenizer.json', 'tokenizer_config.json', 'model.safetensors.index.json',
          'generation_config.json'} <= {p.name for p in out.iterdir()}
  before, after = _tensors(pretrained), _tensors(out)
  for old, new in ((0, 0), (1, 2)):   # [0, 0', 1, 1']: old blocks at 0 and 2
    a, b = _layer_tensors(before, old), _layer_tensors(after, new)
    assert all(np.array_equal(a[k], b[k]) for k in a)
  for k in ('model.embed_tokens.weight', 'model.norm.weight', 'lm_head.weight'):
    assert np.array_equal(before[k], after[k])
  assert _layer_tensors(after, 1)['self_attn.o_proj.weight'].any()   # the new blocks trained
  # transformers computes what jaxlab does with the trained params.
  from jaxlab.rundir.checkpoint import Checkpointer
  from jaxlab.config import load_run_dir
  from jaxlab.train.program import build_program
  from jaxlab.parallel import make_mesh
  cfg = load_run_dir(work / 'pro')
  program = build_program(cfg, make_mesh(cfg.mesh))
  params = Checkpointer(work / 'pro' / 'checkpoints', keep=cfg.train.keep_checkpoints
                        ).restore_params(3, program.abstract_state)
  t = np.random.RandomState(1).randint(0, 288, (2, 16))
  assert H.rel_err(H.hf_logits(out, t), H.jax_logits(cfg.model, params, t)) <= 1e-5
  # Export verifies the params it restores: one saved fingerprint entry off by one, and
  # the step is refused in one line (exit 2) naming the array.
  from jaxlab.rundir.fingerprint import leaf_paths
  meta_file = work / 'pro' / 'checkpoints' / '3' / 'meta' / 'metadata'
  meta = json.loads(meta_file.read_text())
  i = leaf_paths(program.abstract_state).index('params/embed/embedding')
  meta['fingerprint'][i] = (meta['fingerprint'][i] + 1) % 2**32
  meta_file.write_text(json.dumps(meta))
  capsys.readouterr()
  assert main(['export', str(work / 'pro'), '--format', 'hf', '--out', str(tmp_path / 'e2')]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'checkpoint step 3: the restored params differ from the saved ' \
      'ones in 1 array(s) (params/embed/embedding): the checkpoint is corrupt' in err[0], err
  # A tokenizer larger than the model's vocabulary is refused before anything compiles.
  assert main(['run', 'tiny', f'data.tokenizer={pretrained}', 'model.vocab_size=100',
               f'train.workdir={work}', 'name=bad']) == 2


def test_cli_refuses_bad_growth_and_export_options(pretrained, tmp_path, capsys):
  """Exit 2 and one line naming the option, before anything compiles."""
  from jaxlab.launch.cli import main
  src = f'hf:{pretrained}'
  cases = [
      (['grow', '--from', src, '--method', 'layers', '--out', str(tmp_path / 'a')],
       '--method layers needs --layers'),
      (['grow', '--from', src, '--method', 'layers', '--layers', '0-1,3-2', '--out',
        str(tmp_path / 'a')], "the range '3-2'"),
      (['grow', '--from', src, '--method', 'stack', '--insert-every', '1', '--out',
        str(tmp_path / 'a')], '--insert-every adds identity blocks'),
      (['grow', '--from', src, '--method', 'layers', '--layers', '0-2', '--out',
        str(tmp_path / 'a')], 'outside the src layers'),
      (['grow', '--from', src, '--method', 'split', '--out', str(tmp_path / 'a')],
       'cannot grow a Hugging Face checkpoint'),
      (['grow', '--from', src, '--method', 'zero', '--insert-every', '1', '--out',
        str(tmp_path / 'a'), 'model.d_model=64'], 'model.d_model=64 contradicts'),
      (['export', str(tmp_path), '--out', str(tmp_path / 'e')], 'no config.json'),
      (['export', str(tmp_path), '--out', str(tmp_path / 'e'), '--max-shard-size', 'big'],
       "--max-shard-size 'big'"),
  ]
  for argv, message in cases:
    assert main(argv) == 2, argv
    assert message in capsys.readouterr().err, argv
