"""Hugging Face interop (jaxlab.interop.hf): logits against transformers, bit-exact round
trips, muP folded on export, sharded import on 8 fake devices, and every refusal.

The outside reference is transformers 5 (float32, eager attention) on tiny random models
made here with save_pretrained (tests/hf_models.py). Tolerance: relative 1e-5 on the
logits (max |diff| / max |logit|); measured 2e-7 .. 5e-7 for every architecture here (the
two implementations round differently: RoPE angles, summation order), so 1e-5 leaves 20x
room and still fails on any wrong layout, scale or frequency, which moves logits by 1e-2
and more (checked below for the Llama 3 scaling).
"""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip('transformers')

import hf_models as H  # noqa: E402
import xla_env  # noqa: E402
from jaxlab.config import ConfigError, load  # noqa: E402
from jaxlab.config import hf as hf_config  # noqa: E402
from jaxlab.interop import hf  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
RTOL = 1e-5
LLAMA3 = dict(rope_theta=500000.0, rope_scaling={
    'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
    'original_max_position_embeddings': 16})   # short, so positions 0..23 see the scaling
MODELS = {
    'llama_gqa': dict(arch='llama'),
    'llama3_rope': dict(arch='llama', **LLAMA3),
    'llama_tied': dict(arch='llama', tie_word_embeddings=True),
    'qwen3_qk_norm': dict(arch='qwen3', head_dim=24, tie_word_embeddings=True),
    'mistral': dict(arch='mistral'),
}


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  made = {}

  def get(name):
    if name not in made:
      made[name] = H.make_model(tmp_path_factory.mktemp(name), **MODELS[name])
    return made[name]
  return get


def tokens(shape=(2, 24), seed=0):
  return np.random.RandomState(seed).randint(0, H.SIZES['vocab_size'], shape)


@pytest.mark.parametrize('name', list(MODELS))
def test_logits_match_transformers(model_dir, name):
  path = model_dir(name)
  cfg, params = hf.load(path)
  t = tokens()
  ref = H.hf_logits(path, t)
  assert H.rel_err(H.jax_logits(cfg, params, t), ref) <= RTOL
  if name == 'llama3_rope':   # the scaling is in force: without it the logits move
    plain = dataclasses.replace(cfg, rope_scaling='none')
    assert H.rel_err(H.jax_logits(plain, params, t), ref) > 1e-3
  if name == 'qwen3_qk_norm':
    assert cfg.qk_norm and cfg.dim_per_head == 24 and cfg.tie_embeddings


def test_llama3_frequencies_equal_transformers():
  """rope_frequencies against transformers' llama3 RoPE init, Llama 3.1's own constants
  (theta 5e5, factor 8, 1 / 4, 8192) at head dim 128: every regime (kept, smoothed,
  divided) occurs. Both compute in float32, the base frequencies as theta^-x here and
  1 / theta^x there (1 ulp apart at most), which the smoothing's arithmetic carries to
  2.8e-7 relative at one frequency (measured); 4 ulp = 4.8e-7 bounds it."""
  import transformers
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  from jaxlab.config import ModelConfig
  from jaxlab.models.transformer import rope_frequencies
  hf_cfg = transformers.LlamaConfig(hidden_size=4096, num_attention_heads=32,
                                    max_position_embeddings=131072, rope_theta=5e5,
                                    rope_scaling={'rope_type': 'llama3', 'factor': 8.0,
                                                  'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                                                  'original_max_position_embeddings': 8192})
  ref = ROPE_INIT_FUNCTIONS['llama3'](hf_cfg, 'cpu')[0].numpy()
  ours = np.asarray(rope_frequencies(ModelConfig(rope_theta=5e5, rope_scaling='llama3'), 128))
  np.testing.assert_allclose(ours, ref, rtol=4 * 2.0**-23, atol=0)
  plain = 5e5 ** (-np.arange(64) / 64)
  ratio = ours / plain
  assert np.isclose(ratio[0], 1) and np.isclose(ratio[-1], 1 / 8, rtol=1e-5)
  assert np.any((ratio < 0.99) & (ratio > 0.13))   # the smoothed band


def _tensors(path: pathlib.Path) -> dict:
  from safetensors.numpy import load_file
  out = {}
  for f in sorted(path.glob('*.safetensors')):
    out.update(load_file(f))
  return out


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_round_trip_is_bit_exact_per_tensor(tmp_path, dtype):
  """HF -> jaxlab -> HF: every tensor byte for byte (bfloat16 holds exactly in float32),
  from a sharded checkpoint (index + 3 files), written sharded again; and the sharded
  checkpoint loads to the same params as the single file."""
  src = H.make_model(tmp_path / 'src', arch='llama', dtype=dtype, max_shard_size='40KB',
                     **LLAMA3)
  assert (src / 'model.safetensors.index.json').is_file()
  cfg, params = hf.load(src)
  files = hf.save(params, cfg, tmp_path / 'out', dtype=dtype, max_shard_bytes=40_000)
  assert 'model.safetensors.index.json' in files and len(files) > 4
  a, b = _tensors(src), _tensors(tmp_path / 'out')
  assert sorted(a) == sorted(b)
  for name in a:
    assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
    assert a[name].tobytes() == b[name].tobytes(), name
  written = json.loads((tmp_path / 'out' / 'config.json').read_text())
  assert hf_config.model_config(tmp_path / 'out') == cfg
  assert written['rope_parameters']['rope_type'] == 'llama3' and written['dtype'] == dtype
  single = H.make_model(tmp_path / 'single', arch='llama', dtype=dtype, **LLAMA3)
  same = hf.load(single)[1]
  import jax
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(same)))


@pytest.mark.parametrize('variant', ['untied', 'tied_qk_norm'])
def test_export_folds_mup_into_weights_that_transformers_loads(tmp_path, variant):
  """A muP model (base width 32 -> 64: logits x 1/2; no explicit head dim, so the head dim
  scales and the q.k scale is sqrt(8) / 16, not 1/4) saved and read by transformers'
  AutoModelForCausalLM computes jaxlab's logits: the readout multiplier is folded into the
  head (or, tied, into the final norm gain) and the attention scale into wq (or, under
  QK-norm, into the query norm's gain)."""
  import jax
  from jaxlab.config import ModelConfig
  from jaxlab.models import Transformer, parametrization as pz
  cfg = ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96,
                    parametrization='mup', base_d_model=32, norm_eps=1e-5,
                    tie_embeddings=variant != 'untied', qk_norm=variant != 'untied')
  assert pz.attention_scale(cfg) != cfg.dim_per_head ** -0.5
  import flax.linen as nn
  params = nn.unbox(Transformer(cfg).init(jax.random.key(1), tokens())['params'])
  # Gains off 1, so that folding into them is exercised for real.
  rng = np.random.RandomState(0)
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x * (1 + 0.3 * rng.randn(*x.shape)).astype(np.float32)
      if 'scale' in jax.tree_util.keystr(p) else x, params)
  hf.save(params, cfg, tmp_path)
  t = tokens()
  assert H.rel_err(H.hf_logits(tmp_path, t), H.jax_logits(cfg, params, t)) <= RTOL
  arch = json.loads((tmp_path / 'config.json').read_text())['architectures']
  assert arch == (['Qwen3ForCausalLM'] if cfg.qk_norm else ['LlamaForCausalLM'])


_MESH_WORKER = '''
import sys, jax, numpy as np
from jaxlab.config import MeshConfig
from jaxlab.interop import hf
from jaxlab.parallel import make_mesh
assert jax.device_count() == 8
mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
cfg, sharded = hf.load(sys.argv[1], mesh=mesh)
_, single = hf.load(sys.argv[1])
flat_s = jax.tree_util.tree_leaves_with_path(sharded)
flat_1 = jax.tree.leaves(single)
split = 0
for (path, a), b in zip(flat_s, flat_1):
  assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)
  shard_shapes = {s.data.shape for s in a.addressable_shards}
  assert shard_shapes == {a.sharding.shard_shape(a.shape)}, path
  split += a.sharding.shard_shape(a.shape) != a.shape
print('OK', len(flat_s), split)
'''


def test_import_onto_an_8_device_mesh_equals_one_device(model_dir):
  """On 8 fake CPU devices (a fresh process, as tests/test_parallel.py does), each param
  is made shard by shard (data 2 x fsdp 2 x tensor 2) and equals the single-device import
  bit for bit."""
  env = xla_env.env(8, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
  proc = subprocess.run([sys.executable, '-c', _MESH_WORKER, str(model_dir('llama_gqa'))],
                        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  ok, n, split = proc.stdout.split()[-3:]
  assert ok == "OK" and int(n) == 12 and int(split) == 12   # every param has a split dim


# ------------------------------------------------------------------------- refusals

def _config(tmp_path, **changes) -> pathlib.Path:
  raw = {'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', 'vocab_size': 128,
         'hidden_size': 64, 'intermediate_size': 96, 'num_hidden_layers': 2,
         'num_attention_heads': 4, 'num_key_value_heads': 2, 'rms_norm_eps': 1e-5,
         'rope_theta': 10000.0}
  for k, v in changes.items():
    if v is ...:
      raw.pop(k, None)
    else:
      raw[k] = v
  (tmp_path / 'config.json').write_text(json.dumps(raw))
  return tmp_path


@pytest.mark.parametrize('changes, named', [
    (dict(architectures=['GPT2LMHeadModel']), 'architectures'),
    (dict(architectures=['GemmaForCausalLM']), 'architectures'),
    (dict(hidden_act='gelu'), 'hidden_act'),
    (dict(attention_bias=True), 'attention_bias'),
    (dict(mlp_bias=True), 'mlp_bias'),
    (dict(attention_dropout=0.1), 'attention_dropout'),
    (dict(rope_scaling={'rope_type': 'linear', 'factor': 2.0}), 'rope_scaling.rope_type'),
    (dict(rope_scaling={'type': 'dynamic', 'factor': 2.0}), 'rope_scaling.rope_type'),
    (dict(rope_parameters={'rope_type': 'yarn', 'rope_theta': 1e4, 'factor': 4.0}),
     'rope_parameters.rope_type'),
    (dict(rope_scaling={'rope_type': 'llama3', 'factor': 8.0}), 'original_max_position_embeddings'),
    (dict(partial_rotary_factor=0.5), 'partial_rotary_factor'),
    (dict(quantization_config={'quant_method': 'gptq'}), 'quantization_config'),
    (dict(architectures=['MistralForCausalLM'], sliding_window=4096), 'sliding_window'),
    (dict(architectures=['MistralForCausalLM'], sliding_window=...), 'sliding_window'),
    (dict(architectures=['Qwen3ForCausalLM'], use_sliding_window=True), 'use_sliding_window'),
    (dict(architectures=['Qwen3ForCausalLM'], layer_types=['full_attention', 'sliding_attention']),
     'layer_types'),
    (dict(hidden_size=...), 'hidden_size'),
])
def test_unsupported_config_fields_are_refused_by_name(tmp_path, changes, named):
  with pytest.raises(ConfigError, match=named.replace('.', r'\.')):
    hf_config.model_config(_config(tmp_path, **changes))


def test_accepted_variants_read_as_jaxlab_configs(tmp_path):
  ok = hf_config.model_config(_config(tmp_path, architectures=['MistralForCausalLM'],
                                      sliding_window=None, pretraining_tp=2))
  assert (ok.d_model, ok.kv_heads, ok.ff_dim, ok.qk_norm) == (64, 2, 96, False)
  v5 = hf_config.model_config(_config(tmp_path, rope_theta=..., rope_parameters={
      'rope_type': 'llama3', 'rope_theta': 5e5, 'factor': 32.0, 'low_freq_factor': 1.0,
      'high_freq_factor': 4.0, 'original_max_position_embeddings': 8192}))
  assert (v5.rope_theta, v5.rope_scaling, v5.rope_factor) == (5e5, 'llama3', 32.0)


def test_tensors_that_do_not_fit_are_refused(tmp_path, model_dir):
  from safetensors.numpy import load_file, save_file
  src = model_dir('llama_gqa')
  tensors = load_file(src / 'model.safetensors')

  def write(name, content):
    d = tmp_path / name
    d.mkdir()
    (d / 'config.json').write_text((src / 'config.json').read_text())
    save_file(content, d / 'model.safetensors', metadata={'format': 'pt'})
    return d
  bias = dict(tensors, **{'model.layers.0.self_attn.q_proj.bias': np.zeros(64, np.float32)})
  with pytest.raises(ConfigError, match=r'q_proj\.bias'):
    hf.load(write('bias', bias))
  missing = {k: v for k, v in tensors.items() if k != 'model.layers.1.mlp.up_proj.weight'}
  with pytest.raises(ConfigError, match=r'lacks model\.layers\.1\.mlp\.up_proj\.weight'):
    hf.load(write('missing', missing))
  wrong = dict(tensors, **{'model.norm.weight': np.ones(32, np.float32)})
  with pytest.raises(ConfigError, match=r'model\.norm\.weight has shape \(32,\)'):
    hf.load(write('shape', wrong))
  legacy = tmp_path / 'bin'
  legacy.mkdir()
  (legacy / 'config.json').write_text((src / 'config.json').read_text())
  (legacy / 'pytorch_model.bin').write_bytes(b'')
  with pytest.raises(ConfigError, match='convert to safetensors'):
    hf.load(legacy)


def test_model_init_takes_the_architecture_and_refuses_contradictions(model_dir, tmp_path):
  path = model_dir('llama_gqa')
  cfg = load('tiny', [f'model.init=hf:{path}', 'model.dtype=bfloat16'])
  m = cfg.model
  assert (m.d_model, m.n_layers, m.kv_heads, m.ff_dim, m.vocab_size, m.dtype) == \
      (64, 2, 2, 96, 128, 'bfloat16')
  assert load('tiny', [f'model.init=hf:{path}', 'model.d_model=64']).model.d_model == 64
  with pytest.raises(ConfigError, match=r"model\.d_model=32 contradicts model\.init"):
    load('tiny', [f'model.init=hf:{path}', 'model.d_model=32'])
  with pytest.raises(ConfigError, match='launch.py grow --from'):
    load('tiny', [f'model.init=hf:{path}', 'growth.method=stack', 'growth.at_tokens=256'])
  with pytest.raises(ConfigError, match='muP'):
    load('tiny', [f'model.init=hf:{path}', 'model.parametrization=mup', 'model.base_d_model=32'])
  with pytest.raises(ConfigError, match="model.init='nope'"):
    load('tiny', ['model.init=nope'])
  with pytest.raises(ConfigError, match='no config.json'):
    load('tiny', [f'model.init=hf:{tmp_path}'])
