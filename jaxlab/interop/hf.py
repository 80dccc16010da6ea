"""Hugging Face Llama-family checkpoints in and out:

  load(path, *, mesh=None, shardings=None) -> (ModelConfig, params)
  save(params, cfg, path, *, dtype='float32', max_shard_bytes=5e9, ...) -> file names

Every mapping comes from the parameter schema (jaxlab.models.schema), none is written
here: a param's Hugging Face name is `spec.hf` (`{layer}` filled in for each layer of a
scanned param) and its layout `spec.hf_layout`:
  linear  torch's nn.Linear weight, (fan-out dims flattened, fan-in dims flattened): the
          transpose of jaxlab's (fan-in..., fan-out...) matrix view;
  table   nn.Embedding: the dims as jaxlab holds them;
and a vector (norm gain) is stored as it is. The architecture comes from config.json
(jaxlab.config.hf, which refuses what jaxlab cannot compute exactly).

Loading streams: each param is made with jax.make_array_from_callback straight into its
target sharding (the run's, `shardings=`, or the logical rules on `mesh=`, or one device),
and each callback reads only the region of the Hugging Face tensors that its shard holds,
layer by layer, one safetensors read at a time. On a mesh each process materialises only
its own shards; a host never holds a second copy of the model (peak RSS is measured by
bench/hf_import_rss.py). Tensors of any float dtype load as float32 (exactly).

Saving writes the function the params compute under `cfg`: muP multipliers (and the
attention-logit scale where it differs from 1/sqrt(head_dim)) are folded into the weights
that absorb them (`fold_factor`: effective_multiplier under cfg over the same under SP),
so transformers' Llama computes what jaxlab does. Under SP every factor is 1 and the
tensors are written unchanged, bit for bit (float32; bfloat16 / float16 round to nearest
even). One tensor at a time comes to the host (gathered across processes when sharded
over several); process 0 writes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Iterator

import jax
import ml_dtypes
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec, SingleDeviceSharding
from flax import traverse_util

from jaxlab.config.types import ConfigError, ModelConfig
from jaxlab.config import hf as hf_config
from jaxlab.interop import st_files
from jaxlab.models import parametrization as pz
from jaxlab.models import schema
from jaxlab.parallel import DEFAULT_RULES, check_divisible, logical_sharding

DTYPES = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16, 'float16': np.float16}
FLOAT_DTYPES = ('F64', 'F32', 'F16', 'BF16')
# Tensors some checkpoints carry that hold no weights (old Llama checkpoints saved the RoPE
# frequency buffer).
IGNORED_SUFFIXES = ('rotary_emb.inv_freq',)


# ------------------------------------------------------------------------- the layout

def hf_groups(param: schema.ParamSpec) -> list[tuple[int, ...]]:
  """The Hugging Face tensor's dims, each a group of the weight's dims (layer axis
  excluded; indices into the weight's dims) flattened in order."""
  n = len(param.weight_dims)
  if n == 1 or param.hf_layout == 'table':
    return [(d,) for d in range(n)]
  offset = param.weight_dims[0]
  fan_in, fan_out = param.fan_dims()
  return [tuple(d - offset for d in fan_out), tuple(d - offset for d in fan_in)]


def weight_shape(param: schema.ParamSpec, cfg: ModelConfig) -> tuple[int, ...]:
  shape = param.shape(cfg)
  return tuple(shape[d] for d in param.weight_dims)


def hf_shape(param: schema.ParamSpec, cfg: ModelConfig) -> tuple[int, ...]:
  w = weight_shape(param, cfg)
  return tuple(math.prod(w[d] for d in g) for g in hf_groups(param))


def hf_names(param: schema.ParamSpec, cfg: ModelConfig) -> list[str]:
  """The tensor names of one param: one per layer for a scanned param."""
  if param.stacked:
    return [param.hf_name(layer) for layer in range(cfg.n_layers)]
  return [param.hf_name()]


def to_hf(param: schema.ParamSpec, w: np.ndarray) -> np.ndarray:
  """One weight (no layer axis) in jaxlab's layout -> the Hugging Face tensor."""
  groups = hf_groups(param)
  perm = [d for g in groups for d in g]
  return w.transpose(perm).reshape([math.prod(w.shape[d] for d in g) for g in groups])


def _read_weight(ckpt: st_files.Checkpoint, name: str, param: schema.ParamSpec,
                 cfg: ModelConfig, index: tuple[slice, ...]) -> np.ndarray:
  """The region `index` (one slice per weight dim) of one weight, from HF tensor `name`:
  each flattened HF dim is read from its first dim's slice over whole inner dims (a
  contiguous range), then the inner dims are sliced and the dims put in jaxlab's order."""
  shape = weight_shape(param, cfg)
  region, block_shape, inner = [], [], []
  groups = hf_groups(param)
  for g in groups:
    size = math.prod(shape[d] for d in g[1:])
    first = index[g[0]]
    region.append(slice(first.start * size, first.stop * size))
    block_shape += [first.stop - first.start] + [shape[d] for d in g[1:]]
    inner += [slice(None)] + [index[d] for d in g[1:]]
  block = ckpt.read(name, tuple(region)).reshape(block_shape)[tuple(inner)]
  perm = [d for g in groups for d in g]
  return block.transpose(np.argsort(perm)).astype(np.float32)


# ------------------------------------------------------------------------- load

def _check_tensors(ckpt: st_files.Checkpoint, cfg: ModelConfig, specs: dict):
  expected = {}
  for param in specs.values():
    for name in hf_names(param, cfg):
      expected[name] = hf_shape(param, cfg)
  where = ckpt.path
  missing = [n for n in expected if n not in ckpt.shapes]
  if missing:
    raise ConfigError(f'{where}: the checkpoint lacks {", ".join(missing[:5])}'
                      f'{" ..." if len(missing) > 5 else ""} (config.json asks for them)')
  extra = [n for n in ckpt.names() if n not in expected and not n.endswith(IGNORED_SUFFIXES)
           and not (cfg.tie_embeddings and n == 'lm_head.weight')]
  if extra:
    raise ConfigError(f'{where}: tensors jaxlab\'s model has no place for (biases? another '
                      f'architecture?): {", ".join(sorted(extra)[:5])}'
                      f'{" ..." if len(extra) > 5 else ""}')
  for name, shape in expected.items():
    if ckpt.shapes[name] != shape:
      raise ConfigError(f'{where}: tensor {name} has shape {ckpt.shapes[name]}; config.json '
                        f'implies {shape}')
    if ckpt.dtypes[name] not in FLOAT_DTYPES:
      raise ConfigError(f'{where}: tensor {name} has dtype {ckpt.dtypes[name]}; allowed: '
                        f'{", ".join(FLOAT_DTYPES)} (quantised checkpoints are not supported)')


def _lookup(tree: dict, path: tuple[str, ...]):
  for k in path:
    tree = tree[k]
  return tree


def param_shardings(cfg: ModelConfig, mesh, rules=DEFAULT_RULES) -> dict:
  """{param path: NamedSharding} from the params' logical axes and the sharding rules;
  ConfigError (naming the config key) where a dim does not split over its mesh axes."""
  specs = schema.specs(cfg)
  logical = {path: PartitionSpec(*p.axes) for path, p in specs.items()}
  abstract = {path: jax.ShapeDtypeStruct(p.shape(cfg), np.float32) for path, p in specs.items()}
  check_divisible(abstract, logical, mesh, rules,
                  keys={a: ax.key for a, ax in schema.AXES.items()})
  return logical_sharding(logical, mesh, rules)


def load_params(path: str | os.PathLike, cfg: ModelConfig, shardings: dict | None = None) -> dict:
  """The params of `cfg` from the checkpoint at `path`, each made in its sharding
  (`shardings`: a param tree of shardings, or {param path: sharding}; default: the first
  device); `cfg` must be the checkpoint's architecture (hf_config.model_config)."""
  ckpt = st_files.Checkpoint(path)
  specs = schema.specs(cfg)
  _check_tensors(ckpt, cfg, specs)
  default = SingleDeviceSharding(jax.devices()[0])
  flat = {}
  for p, param in specs.items():
    if shardings is None:
      sharding = default
    elif p in shardings:
      sharding = shardings[p]
    else:
      sharding = _lookup(shardings.get('params', shardings), p)
    flat[p] = _make_leaf(ckpt, param, cfg, sharding)
  return traverse_util.unflatten_dict(flat)


def _make_leaf(ckpt, param: schema.ParamSpec, cfg: ModelConfig, sharding) -> jax.Array:
  shape = param.shape(cfg)
  names = hf_names(param, cfg)

  def shard(index):
    idx = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape))
    if not param.stacked:
      return _read_weight(ckpt, names[0], param, cfg, idx)
    out = np.empty([s.stop - s.start for s in idx], np.float32)
    for j, layer in enumerate(range(idx[0].start, idx[0].stop)):
      out[j] = _read_weight(ckpt, names[layer], param, cfg, idx[1:])
    return out
  return jax.make_array_from_callback(shape, sharding, shard)


def load(path: str | os.PathLike, *, mesh=None, shardings: dict | None = None,
         rules=DEFAULT_RULES) -> tuple[ModelConfig, dict]:
  """(ModelConfig, params) of the Hugging Face model directory `path` (config.json and
  model.safetensors or sharded safetensors with their index). Params land in `shardings`
  (a param tree of shardings), else sharded on `mesh` by the logical rules, else on the
  first device. The config is SP (the weights compute the function themselves)."""
  cfg = hf_config.model_config(path)
  if shardings is None and mesh is not None:
    shardings = param_shardings(cfg, mesh, rules)
  return cfg, load_params(path, cfg, shardings)


# ------------------------------------------------------------------------- save

def fold_factor(cfg: ModelConfig, param: schema.ParamSpec) -> float:
  """What the weight is multiplied by on export: its forward factors under `cfg` (own
  multiplier and what it absorbs: the q.k scale on wq, or on the query norm's gain under
  QK-norm; a tied readout's multiplier on the final norm's gain) over the same under SP,
  whose forward is transformers' Llama. 1 under SP."""
  sp = dataclasses.replace(cfg, parametrization='sp', base_d_model=0, base_n_heads=0,
                           base_head_dim=0, base_d_ff=0)
  return pz.effective_multiplier(cfg, param) / pz.effective_multiplier(sp, param)


def _host(x: jax.Array) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def hf_tensors(params: dict, cfg: ModelConfig, dtype: str = 'float32'
               ) -> Iterator[tuple[str, np.ndarray]]:
  """(name, tensor) of every Hugging Face tensor of `params` (model `cfg`), muP folded,
  one at a time (every process must consume it: sharded leaves are gathered)."""
  if dtype not in DTYPES:
    raise ConfigError(f'dtype={dtype!r} is not allowed; allowed: {", ".join(DTYPES)}')
  np_dtype = DTYPES[dtype]
  tree = params.get('params', params)
  for p, param in schema.specs(cfg).items():
    leaf = _lookup(tree, p)
    factor = fold_factor(cfg, param)
    for layer, name in enumerate(hf_names(param, cfg)):
      w = _host(leaf[layer] if param.stacked else leaf).astype(np.float32)
      if factor != 1.0:
        w = w * np.float32(factor)
      yield name, to_hf(param, w).astype(np_dtype)


def save(params: dict, cfg: ModelConfig, path: str | os.PathLike, *, dtype: str = 'float32',
         max_shard_bytes: int = 5 * 10**9, max_positions: int = 2048,
         bos_id: int | None = None, eos_id: int | None = None) -> list[str]:
  """Writes `params` of model `cfg` as a Hugging Face model directory: config.json,
  generation_config.json and safetensors (several files and the index above
  `max_shard_bytes`). Returns the files written."""
  path = pathlib.Path(path)
  tensors = hf_tensors(params, cfg, dtype)
  if jax.process_index() != 0:
    for _ in tensors:   # take part in the gathers; process 0 writes
      pass
    return []
  files = st_files.write_sharded(tensors, path, int(max_shard_bytes))
  config = hf_config.hf_config(cfg, dtype=dtype, max_positions=max_positions, bos_id=bos_id,
                               eos_id=eos_id)
  (path / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
  generation = {'bos_token_id': bos_id, 'eos_token_id': eos_id}
  (path / 'generation_config.json').write_text(json.dumps(generation, indent=2) + '\n')
  return ['config.json', 'generation_config.json'] + files
