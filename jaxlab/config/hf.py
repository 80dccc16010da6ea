"""A Hugging Face config.json <-> jaxlab's ModelConfig, for the Llama family.

Read (`model_config`): LlamaForCausalLM (SmolLM / SmolLM2 / TinyLlama / Llama 2 and 3),
MistralForCausalLM without a sliding window, and Qwen3ForCausalLM (QK-norm). Both config
layouts are read: transformers 4's `rope_theta` + `rope_scaling` and transformers 5's
`rope_parameters`. Anything that would make the checkpoint compute another function than
jaxlab's model -- another architecture, a RoPE type other than the default and Llama 3's,
biases, a sliding window, another activation, partial rotary dims, quantised weights -- is
refused with a ConfigError naming the field and what is allowed.

Write (`hf_config`): LlamaForCausalLM, or Qwen3ForCausalLM when model.qk_norm is on (the
only Llama-family architecture with QK-norm), in a layout both transformers 4 and 5 read
(`rope_theta` / `rope_scaling` and `rope_parameters`, equal).

`resolve_init` fills the architecture of a config with `model.init=hf:DIR` from DIR and
refuses explicit overrides that contradict it. Pure Python (no jax import), so config
loading stays light.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

from jaxlab.config.types import Config, ConfigError, ModelConfig

# Architecture -> (model_type, has QK-norm).
ARCHITECTURES = {
    'LlamaForCausalLM': ('llama', False),
    'MistralForCausalLM': ('mistral', False),
    'Qwen3ForCausalLM': ('qwen3', True),
}
# config.json key -> ModelConfig field, for the plain sizes. Defaults where a key may be
# missing are transformers' (LlamaConfig / MistralConfig / Qwen3Config agree on these).
SIZES = (('vocab_size', 'vocab_size'), ('hidden_size', 'd_model'),
         ('num_hidden_layers', 'n_layers'), ('num_attention_heads', 'n_heads'),
         ('intermediate_size', 'd_ff'))
OPTIONAL = {'rms_norm_eps': ('norm_eps', 1e-6), 'tie_word_embeddings': ('tie_embeddings', False)}
# Keys that change the function unless they hold the allowed value (missing = allowed,
# except Mistral's sliding window, whose default in transformers is 4096).
MUST_BE = {'hidden_act': 'silu', 'attention_bias': False, 'mlp_bias': False,
           'attention_dropout': 0.0, 'use_sliding_window': False, 'partial_rotary_factor': 1.0,
           'quantization_config': None}
LLAMA3_KEYS = {'factor': 'rope_factor', 'low_freq_factor': 'rope_low_freq_factor',
               'high_freq_factor': 'rope_high_freq_factor',
               'original_max_position_embeddings': 'rope_original_max_len'}
# The ModelConfig fields a checkpoint decides (model.init=hf:DIR fills them).
ARCH_FIELDS = tuple(f for _, f in SIZES) + ('n_kv_heads', 'head_dim', 'rope_theta', 'qk_norm') + \
    tuple(f for f, _ in OPTIONAL.values()) + ('rope_scaling',) + tuple(LLAMA3_KEYS.values())
_DEFAULT_THETA = 10_000.0


def read_json(path: pathlib.Path, what: str) -> dict:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise ConfigError(f'{what}: no {path.name} in {path.parent}') from None
  except (OSError, json.JSONDecodeError) as err:
    raise ConfigError(f'{what}: {path} cannot be read as JSON ({err})') from None


def _rope(raw: dict, where: str) -> dict:
  """The ModelConfig rope fields from either config layout."""
  params = raw.get('rope_parameters')
  key = 'rope_parameters'
  if params is None:
    params = dict(raw.get('rope_scaling') or {})
    key = 'rope_scaling'
    params.setdefault('rope_theta', raw.get('rope_theta', _DEFAULT_THETA))
  if not isinstance(params, dict) or 'full_attention' in params:
    raise ConfigError(f'{where}: {key}={params!r} is not a single RoPE parameter set '
                      '(per-layer-type RoPE is not supported)')
  kind = params.get('rope_type', params.get('type', 'default'))
  out = {'rope_theta': float(params.get('rope_theta', _DEFAULT_THETA))}
  if params.get('partial_rotary_factor', 1.0) != 1.0:
    raise ConfigError(f'{where}: {key}.partial_rotary_factor='
                      f'{params["partial_rotary_factor"]} is not supported (allowed: 1.0)')
  if kind == 'default':
    return dict(out, rope_scaling='none')
  if kind != 'llama3':
    raise ConfigError(f"{where}: {key}.rope_type={kind!r} is not supported; allowed: 'default' "
                      "(none) or 'llama3' (jaxlab has no linear / dynamic / yarn / longrope RoPE)")
  missing = [k for k in LLAMA3_KEYS if k not in params]
  if missing:
    raise ConfigError(f"{where}: {key} of rope_type 'llama3' lacks {', '.join(missing)}")
  out.update({field: type(getattr(ModelConfig, field))(params[k])
              for k, field in LLAMA3_KEYS.items()})
  return dict(out, rope_scaling='llama3')


def model_config(path: str | pathlib.Path) -> ModelConfig:
  """The ModelConfig of the Hugging Face model directory `path` (its config.json), or a
  ConfigError naming the field that jaxlab cannot represent exactly."""
  path = pathlib.Path(path)
  raw = read_json(path / 'config.json', f'Hugging Face model {path}')
  where = f'{path / "config.json"}'
  arch = raw.get('architectures') or []
  if len(arch) != 1 or arch[0] not in ARCHITECTURES:
    raise ConfigError(f'{where}: architectures={arch!r} is not supported; allowed: '
                      f'{", ".join(ARCHITECTURES)}')
  model_type, qk_norm = ARCHITECTURES[arch[0]]
  for key, allowed in MUST_BE.items():
    if key in raw and raw[key] != allowed:
      raise ConfigError(f'{where}: {key}={raw[key]!r} changes the function; jaxlab supports '
                        f'only {key}={allowed!r}')
  window = raw.get('sliding_window', 4096 if model_type == 'mistral' else None)
  if model_type == 'mistral' and window is not None:
    raise ConfigError(f'{where}: sliding_window={window} (a sliding-window attention); jaxlab '
                      'supports Mistral only without one (sliding_window: null)')
  layer_types = raw.get('layer_types') or []
  if any(t != 'full_attention' for t in layer_types):
    raise ConfigError(f'{where}: layer_types has {sorted(set(layer_types))}; jaxlab supports '
                      "only 'full_attention' layers")
  missing = [k for k, _ in SIZES if k not in raw]
  if missing:
    raise ConfigError(f'{where}: lacks {", ".join(missing)}')
  fields = {f: int(raw[k]) for k, f in SIZES}
  fields.update({f: type(default)(raw.get(k, default)) for k, (f, default) in OPTIONAL.items()})
  n_heads = fields['n_heads']
  kv = raw.get('num_key_value_heads') or n_heads
  head_dim = raw.get('head_dim') or fields['d_model'] // n_heads
  fields.update(n_kv_heads=int(kv), qk_norm=qk_norm,
                head_dim=0 if head_dim * n_heads == fields['d_model'] else int(head_dim))
  fields.update(_rope(raw, where))
  return ModelConfig(**fields)


def architecture(cfg: ModelConfig) -> tuple[str, str]:
  """(architecture, model_type) that computes `cfg`'s function in transformers."""
  return ('Qwen3ForCausalLM', 'qwen3') if cfg.qk_norm else ('LlamaForCausalLM', 'llama')


def hf_config(cfg: ModelConfig, *, dtype: str, max_positions: int, bos_id: int | None,
              eos_id: int | None) -> dict:
  """config.json of `cfg` (the weights written with it have any muP multipliers folded in:
  jaxlab.interop.hf.save)."""
  arch, model_type = architecture(cfg)
  rope = {'rope_type': 'default', 'rope_theta': cfg.rope_theta}
  if cfg.rope_scaling == 'llama3':
    rope.update({'rope_type': 'llama3'}, **{k: getattr(cfg, f) for k, f in LLAMA3_KEYS.items()})
  out = {
      'architectures': [arch], 'model_type': model_type,
      'vocab_size': cfg.vocab_size, 'hidden_size': cfg.d_model,
      'intermediate_size': cfg.ff_dim, 'num_hidden_layers': cfg.n_layers,
      'num_attention_heads': cfg.n_heads, 'num_key_value_heads': cfg.kv_heads,
      'head_dim': cfg.dim_per_head, 'hidden_act': 'silu',
      'max_position_embeddings': int(max_positions), 'rms_norm_eps': cfg.norm_eps,
      'tie_word_embeddings': cfg.tie_embeddings, 'attention_bias': False,
      'attention_dropout': 0.0, 'initializer_range': cfg.init_std,
      'bos_token_id': bos_id, 'eos_token_id': eos_id, 'use_cache': True,
      'torch_dtype': dtype, 'dtype': dtype,
      # transformers 4 reads these two, transformers 5 the rope_parameters (equal).
      'rope_theta': cfg.rope_theta,
      'rope_scaling': None if cfg.rope_scaling == 'none' else
                      {k: v for k, v in rope.items() if k != 'rope_theta'},
      'rope_parameters': rope,
  }
  if model_type == 'llama':
    out['mlp_bias'] = False
  else:
    out.update(use_sliding_window=False, sliding_window=None,
               max_window_layers=cfg.n_layers, layer_types=['full_attention'] * cfg.n_layers)
  return out


def init_dir(spec: str) -> pathlib.Path:
  """The directory of model.init='hf:DIR'."""
  if not spec.startswith('hf:') or len(spec) == 3:
    raise ConfigError(f"model.init={spec!r} is not allowed: expected '' or 'hf:DIR' (a Hugging "
                      'Face model directory with config.json and *.safetensors)')
  return pathlib.Path(spec[3:]).expanduser()


def _arch_value(m: ModelConfig, field: str):
  """A field as it acts (0 sizes resolved), for comparisons."""
  return {'n_kv_heads': m.kv_heads, 'head_dim': m.dim_per_head, 'd_ff': m.ff_dim}.get(
      field, getattr(m, field))


def resolve_init(cfg: Config, explicit: set[str]) -> Config:
  """model.init=hf:DIR: the model's architecture comes from DIR/config.json. A model key
  set on the command line (`explicit`) that contradicts it is refused, as is muP away from
  its base width (the checkpoint computes the SP function) and in-run growth (use
  `launch.py grow --from hf:DIR`). data.tokenizer defaults to DIR when DIR holds a
  tokenizer.json and the tokenizer was left at 'byte'."""
  path = init_dir(cfg.model.init)
  hf = model_config(path)
  for field in ARCH_FIELDS:
    key = f'model.{field}'
    if key in explicit and _arch_value(cfg.model, field) != _arch_value(hf, field):
      raise ConfigError(f'{key}={getattr(cfg.model, field)!r} contradicts model.init='
                        f'{cfg.model.init} (whose config.json gives {_arch_value(hf, field)!r}); '
                        f'drop the override')
  m = cfg.model
  if m.parametrization == 'mup' and (m.base_d_model not in (0, hf.d_model) or m.base_n_heads
                                     or m.base_head_dim or m.base_d_ff):
    raise ConfigError(f'model.parametrization=mup with a base width ({m.base_d_model}) other '
                      f'than the checkpoint\'s d_model={hf.d_model} would change the function '
                      f'model.init={m.init} computes; leave the muP base at the model width')
  if cfg.growth.method != 'none':
    raise ConfigError(f'model.init={m.init} starts from a fixed checkpoint; grow it with '
                      f'`launch.py grow --from {m.init} ...` instead of growth.method='
                      f'{cfg.growth.method}')
  model = dataclasses.replace(m, **{f: getattr(hf, f) for f in ARCH_FIELDS})
  data = cfg.data
  if 'data.tokenizer' not in explicit and data.tokenizer == 'byte' and \
      (path / 'tokenizer.json').is_file():
    data = dataclasses.replace(data, tokenizer=str(path))
  return dataclasses.replace(cfg, model=model, data=data)
