"""What every process of a multi-host run must see alike: a global batch from each
process's rows, and process 0's answer to a question only it can answer."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def to_global(batch: dict, sharding) -> dict:
  """{name: this process's rows} -> {name: the global array, in `sharding`}."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def agree(ok: bool) -> bool:
  """Process 0's answer, on every process (a decision only process 0 can take)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(jnp.asarray(ok, jnp.int32)))


def step_of_process_0(step: int | None) -> int | None:
  """Process 0's step (or None), on every process."""
  if jax.process_count() == 1:
    return step
  from jax.experimental import multihost_utils
  shared = multihost_utils.broadcast_one_to_all(jnp.asarray(-1 if step is None else step,
                                                            jnp.int32))
  return None if int(shared) < 0 else int(shared)
