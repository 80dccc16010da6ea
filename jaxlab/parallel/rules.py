"""Logical axis names -> mesh axes. Sharding is data: the model only names its axes.

Flax assigns, for each array, every logical name the first rule whose mesh axes are
still free in that array; so 'embed' lands on 'fsdp' for parameters but stays
unsharded in activations whose 'batch' dim already took 'fsdp'.
"""
from __future__ import annotations

import contextlib
import math

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlab.config.types import ConfigError

DEFAULT_RULES: tuple[tuple[str, object], ...] = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('vocab', 'tensor'),
    ('kv', None),
    ('seq', 'context'),     # ring attention (jaxlab/kernels/ring_attention.py)
    ('layers', None),
)


def logical_sharding(logical_specs, mesh: Mesh, rules=DEFAULT_RULES):
  """A pytree of logical PartitionSpecs -> the same pytree of NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules=DEFAULT_RULES):
  """Entered inside a traced step: the model's logical activation constraints
  (nn.with_logical_constraint) take effect with the same rules as the params. Outside
  it they are no-ops. (jax.set_mesh is not allowed under jit; the abstract mesh is.)"""
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(list(rules)):
    yield


def batch_sharding(mesh: Mesh, ndim: int = 2, rules=DEFAULT_RULES) -> NamedSharding:
  """Sharding of a host batch [batch, seq, ...]: split over the data-parallel axes."""
  spec = nn.logical_to_mesh_axes(('batch',) + (None,) * (ndim - 1), list(rules))
  return NamedSharding(mesh, spec)


def check_divisible(abstract_tree, logical_specs, mesh: Mesh, rules=DEFAULT_RULES,
                    keys: dict[str, str] | None = None):
  """Raises ConfigError (naming the config key: `keys` maps a logical axis to it, e.g.
  from jaxlab.models.schema.AXES) when a sharded dim does not split evenly over its mesh
  axes -- checked on shapes, before anything compiles."""
  specs = jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  leaves = jax.tree.leaves(abstract_tree)
  for leaf, spec in zip(leaves, specs):
    mesh_axes = nn.logical_to_mesh_axes(tuple(spec), list(rules))
    for size, logical, axes in zip(leaf.shape, spec, mesh_axes):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else tuple(axes)
      ways = math.prod(mesh.shape[a] for a in axes)
      if size % ways:
        key = (keys or {}).get(logical, f'the {logical!r} dimension')
        good = -(-size // ways) * ways
        raise ConfigError(
            f'{key}={size} cannot be split evenly over mesh axes {"x".join(axes)} '
            f'({ways} ways); use a multiple of {ways} (e.g. {key}={good}) or change the mesh')


def shard_map_logical(fn, args: tuple, names: tuple, out_names: tuple[str, ...]):
  """fn(*args), run shard by shard (jax.shard_map) over the mesh the step traces under
  (activation_rules), with each arg's and the output's PartitionSpec from its logical
  names under the current rules; plain fn(*args) when no multi-device mesh is in context.
  For code XLA cannot partition by itself (Pallas kernels are opaque custom calls). None
  args pass through unsharded."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn(*args)
  present = [i for i, a in enumerate(args) if a is not None]
  specs = tuple(nn.logical_to_mesh_axes(names[i]) for i in present)

  def per_shard(*given):
    full = list(args)
    for i, a in zip(present, given):
      full[i] = a
    return fn(*full)
  return jax.shard_map(per_shard, mesh=mesh, in_specs=specs,
                       out_specs=nn.logical_to_mesh_axes(out_names), check_vma=False)(
                           *(args[i] for i in present))
