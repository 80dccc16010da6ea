"""Logical axis names -> mesh axes. Sharding is data: the model only names its axes.

Flax assigns, for each array, every logical name the first rule whose mesh axes are
still free in that array; so 'embed' lands on 'fsdp' for parameters but stays
unsharded in activations whose 'batch' dim already took 'fsdp'.
"""
from __future__ import annotations

import flax.linen as nn
from jax.sharding import Mesh, NamedSharding

DEFAULT_RULES: tuple[tuple[str, object], ...] = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('vocab', 'tensor'),
    ('kv', None),
    ('seq', None),
    ('layers', None),
)


def logical_sharding(logical_specs, mesh: Mesh, rules=DEFAULT_RULES):
  """A pytree of logical PartitionSpecs -> the same pytree of NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def batch_sharding(mesh: Mesh, ndim: int = 2, rules=DEFAULT_RULES) -> NamedSharding:
  """Sharding of a host batch [batch, seq, ...]: split over the data-parallel axes."""
  spec = nn.logical_to_mesh_axes(('batch',) + (None,) * (ndim - 1), list(rules))
  return NamedSharding(mesh, spec)
