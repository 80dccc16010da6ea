"""Train state and its sharded initialisation."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxlab.models import schema
from jaxlab.parallel import check_divisible, logical_sharding


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  stash: Any      # {} -- inside a V-cycle, {str(level): params} of the finer levels


def fresh_state(model: nn.Module, tx: optax.GradientTransformation, seq_len: int, rng,
                boxed: bool, stash_models: dict | None = None) -> TrainState:
  """Step 0: params initialised from rng, the optimizer's initial state (traceable: jit it
  into its shards, or vmap it over a population's keys)."""
  tokens_BxT = jnp.zeros((1, seq_len), jnp.int32)
  params = model.init(rng, tokens_BxT)['params']
  stash = {k: m.init(rng, tokens_BxT)['params'] for k, m in (stash_models or {}).items()}
  if not boxed:
    params, stash = nn.unbox(params), nn.unbox(stash)
  # Initialising the optimizer on the boxed params keeps the logical axis names on its
  # moments, so the optimizer state shards exactly like the params it mirrors.
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    stash=stash)


def state_shardings(model, tx, seq_len: int, mesh, stash_models=None):
  """(abstract TrainState, matching pytree of NamedShardings), without allocating.
  stash_models: {name: model} whose params the state stashes (V-cycle), or None."""
  rng = jax.random.key(0)
  _init_fn = functools.partial(fresh_state, stash_models=stash_models)
  boxed = jax.eval_shape(functools.partial(_init_fn, model, tx, seq_len, boxed=True), rng)
  specs = nn.get_partition_spec(boxed)
  check_divisible(boxed, specs, mesh, keys={a: ax.key for a, ax in schema.AXES.items()})
  shardings = logical_sharding(specs, mesh)
  abstract = jax.eval_shape(functools.partial(_init_fn, model, tx, seq_len, boxed=False), rng)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return abstract, shardings


def init_state(model, tx, seq_len: int, seed: int, shardings) -> TrainState:
  """Initialises the state directly into its shards (no full copy on one device)."""
  init = jax.jit(functools.partial(fresh_state, model, tx, seq_len, boxed=False),
                 out_shardings=shardings)
  return init(jax.random.key(seed))


def init_state_from(params, tx, shardings) -> TrainState:
  """A fresh train state around given params (already in their shards): step 0 and the
  optimizer's initial state, made in its shards."""
  init = jax.jit(lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                      opt_state=tx.init(p), stash={}),
                 out_shardings=shardings, donate_argnums=0)
  return init(params)
