"""Parameter specs: every parameter's facts, declared once where the model creates it.

A `ParamSpec` says, for one parameter:
  role        'embedding' | 'hidden' | 'output' | 'norm' | 'bias': how the parametrization
              initialises and multiplies it (jaxlab.models.parametrization) and whether it
              decays;
  axes        its logical axis names, one per dim ('layers' first for a scanned param);
              the size of each comes from the config through `AXES` (the one table from
              a logical axis to the width it scales with), and the sharding rules map the
              same names onto the mesh (jaxlab.parallel.rules);
  fan_in      which dims are fan-in (the matrix view: fan-in dims x fan-out dims; muP's
              width multipliers, the spectral diagnostic's matrix shape);
  growth      per dim, how width growth and multi-level coalescing treat it:
                'split'  an input side: a unit copied c times has its weights divided by c
                         (Net2Net), coalescing sums its group, de-coalescing copies / k;
                'copy'   an output side or a vector: copies, averages on coalescing;
                'zero'   like 'copy', and it writes the residual stream: under 'zero' growth
                         the param's new entries are 0 (and a new layer's are, in depth);
                'keep'   never changes size (vocab, head dim);
                'layer'  the scanned layer axis (depth growth gathers along it);
  hf          its name in the Hugging Face Llama layout ('{layer}' inside the blocks);
  hf_layout   how torch stores it there: 'linear' (nn.Linear: (fan-out dims flattened,
              fan-in dims flattened), jaxlab's matrix view transposed) or 'table'
              (nn.Embedding: the dims as jaxlab holds them); a vector is stored as is;
  norm_input  the matrix reads an RMSNorm output (AdamP's weight diagnostics);
  absorbs     forward factors besides its own multiplier that growth keeps constant by
              rescaling this param: 'attention' (the q.k logit scale, on wq), 'readout'
              (a tied readout's output / embedding multiplier ratio, on the final gain).

This module is the vocabulary; the model (jaxlab.models.transformer) declares each
parameter with `declare(module, name, spec, init)` (a Flax param boxed with its logical
names and its spec), and jaxlab.models.schema reads the declarations back by tracing the
model. Everything else -- parametrization, optimizer groups, AdamP layouts, growth of
params and optimizer moments, diagnostics, sharding and checkpoint interop -- reads them
from there, so a new kind of parameter is a change to the model and nothing else.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jaxlab.config.types import ModelConfig

ROLES = ('embedding', 'hidden', 'output', 'norm', 'bias')
GROWTH = ('split', 'copy', 'zero', 'keep', 'layer')
HF_LAYOUTS = ('linear', 'table')


@dataclasses.dataclass(frozen=True)
class Axis:
  attr: str        # ModelConfig attribute (or property) giving the size
  key: str         # the config key a user sets, for messages


# Logical axis -> the width it scales with. The one place that knows it.
AXES = {
    'vocab': Axis('vocab_size', 'model.vocab_size'),
    'embed': Axis('d_model', 'model.d_model'),
    'heads': Axis('n_heads', 'model.n_heads'),
    'kv_heads': Axis('kv_heads', 'model.n_kv_heads'),
    'kv': Axis('dim_per_head', 'model.head_dim'),
    'mlp': Axis('ff_dim', 'model.d_ff'),
    'layers': Axis('n_layers', 'model.n_layers'),
}


def axis_size(cfg: ModelConfig, axis: str) -> int:
  return int(getattr(cfg, AXES[axis].attr))


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  role: str
  axes: tuple[str, ...]
  fan_in: tuple[bool, ...]
  growth: tuple[str, ...]
  hf: str = ''
  hf_layout: str = 'linear'
  norm_input: bool = False
  absorbs: tuple[str, ...] = ()

  def __post_init__(self):
    if self.hf_layout not in HF_LAYOUTS:
      raise ValueError(f'hf_layout {self.hf_layout!r} is not known; allowed: '
                       f'{", ".join(HF_LAYOUTS)}')
    if self.role not in ROLES:
      raise ValueError(f'param role {self.role!r} is not known; allowed: {", ".join(ROLES)}')
    if not len(self.axes) == len(self.fan_in) == len(self.growth):
      raise ValueError(f'ParamSpec axes {self.axes}, fan_in {self.fan_in} and growth '
                       f'{self.growth} must have one entry per dim')
    for a in self.axes:
      if a not in AXES:
        raise ValueError(f'logical axis {a!r} is not in jaxlab.models.schema.AXES')
    for g in self.growth:
      if g not in GROWTH:
        raise ValueError(f'growth {g!r} is not known; allowed: {", ".join(GROWTH)}')

  @property
  def stacked(self) -> bool:
    """True for a param under the scanned 'layers' axis (dim 0)."""
    return bool(self.axes) and self.axes[0] == 'layers'

  def with_layers(self) -> 'ParamSpec':
    """This spec with the scan's leading 'layers' axis (which nn.scan adds to the param)."""
    if self.stacked:
      return self
    return dataclasses.replace(self, axes=('layers',) + self.axes, fan_in=(False,) + self.fan_in,
                               growth=('layer',) + self.growth)

  def shape(self, cfg: ModelConfig) -> tuple[int, ...]:
    return tuple(axis_size(cfg, a) for a in self.axes)

  @property
  def weight_dims(self) -> tuple[int, ...]:
    """The dims of one weight (the layer axis excluded)."""
    return tuple(i for i, a in enumerate(self.axes) if a != 'layers')

  @property
  def is_matrix(self) -> bool:
    return len(self.weight_dims) >= 2

  def fan_dims(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(fan-in dims, fan-out dims) of one weight. A vector's one dim is its fan-out."""
    dims = self.weight_dims
    return (tuple(i for i in dims if self.fan_in[i]), tuple(i for i in dims if not self.fan_in[i]))

  def fan_sizes(self, cfg: ModelConfig) -> tuple[int, int]:
    """(fan-in, fan-out) sizes of one weight (the products of the dims; 1 when empty)."""
    shape = self.shape(cfg)
    fin, fout = self.fan_dims()
    return math.prod(shape[i] for i in fin), math.prod(shape[i] for i in fout)

  def hf_name(self, layer: int | None = None) -> str:
    return self.hf.format(layer=layer) if '{layer}' in self.hf else self.hf


def spec(role: str, *dims: tuple[str, str, bool], hf: str = '', hf_layout: str = 'linear',
         norm_input: bool = False, absorbs: tuple[str, ...] = ()) -> ParamSpec:
  """A ParamSpec from (logical axis, growth, is fan-in) triples, one per dim."""
  return ParamSpec(role=role, axes=tuple(d[0] for d in dims), growth=tuple(d[1] for d in dims),
                   fan_in=tuple(d[2] for d in dims), hf=hf, hf_layout=hf_layout,
                   norm_input=norm_input, absorbs=absorbs)


class Declared(nn.LogicallyPartitioned):
  """A param box carrying its logical names (for sharding) and its ParamSpec."""
  spec: ParamSpec | None = struct.field(default=None, pytree_node=False)


def declare(module: nn.Module, name: str, param_spec: ParamSpec,
            init: Callable[..., jax.Array]) -> jax.Array:
  """Creates param `name` of `module` from its spec: shape and logical names from the
  spec's axes and the module's config, values from `init` (the parametrization's)."""
  shape = param_spec.shape(module.cfg)

  def boxed(key, shape_, dtype):
    return Declared(init(key, shape_, dtype), param_spec.axes, spec=param_spec)
  return module.param(name, boxed, shape, jnp.float32)


def is_declared(x) -> bool:
  return isinstance(x, Declared)


def dict_keys(path) -> tuple[str, ...]:
  """The dict keys of a tree path (a boxed tree's attribute keys dropped)."""
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
