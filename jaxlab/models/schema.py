"""The model's parameter schema, read back from its declarations: {param path: ParamSpec}.

`specs(cfg)` traces Transformer(cfg) once (jax.eval_shape, cached per config) and collects
the ParamSpec every param was declared with (jaxlab.models.param_spec, which also says
what a spec holds). The rest of jaxlab reads parameter facts only through here:
`map_params` maps a function of (spec, leaf) over a param tree, `map_moments` over every
leaf of an optimizer state that mirrors a param, `count` counts params by role.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxlab.config.types import ModelConfig
from jaxlab.models.param_spec import (AXES, GROWTH, ROLES, Axis, ParamSpec, axis_size,
                                      dict_keys, is_declared)
from jaxlab.models.transformer import Transformer

__all__ = ['AXES', 'GROWTH', 'ROLES', 'Axis', 'ParamSpec', 'axis_size', 'count', 'dict_keys',
           'map_moments', 'map_params', 'spec_at', 'spec_tree', 'specs']


# ----------------------------------------------------------------------- the model's schema

@functools.lru_cache(maxsize=256)
def _traced(cfg: ModelConfig):
  boxed = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  flat = jax.tree_util.tree_flatten_with_path(boxed['params'], is_leaf=is_declared)[0]
  out = {}
  for path, box in flat:
    if not is_declared(box):
      raise ValueError(f'param {"/".join(dict_keys(path))} was not created through '
                       'jaxlab.models.schema.declare (it has no ParamSpec)')
    s = box.spec.with_layers() if box.names and box.names[0] == 'layers' else box.spec
    if tuple(box.names) != s.axes:
      raise ValueError(f'param {"/".join(dict_keys(path))}: its logical names {box.names} '
                       f'do not match its spec axes {s.axes}')
    out[dict_keys(path)] = s
  return out


def specs(cfg: ModelConfig) -> dict[tuple[str, ...], ParamSpec]:
  """{param path (dict keys, no 'params' level): spec} of Transformer(cfg), in tree order."""
  return dict(_traced(cfg))


def spec_at(cfg: ModelConfig, names: tuple[str, ...]) -> ParamSpec:
  """The spec of the param at `names` (a leading 'params' level is allowed)."""
  table = _traced(cfg)
  key = tuple(names[1:]) if names[:1] == ('params',) else tuple(names)
  if key not in table:
    raise ValueError(f'param {"/".join(names)!r} is not declared by the model (known: '
                     f'{", ".join("/".join(k) for k in table)})')
  return table[key]


def map_params(fn: Callable[..., Any], tree: Any, cfg: ModelConfig, *rest: Any) -> Any:
  """tree_map of fn(spec, leaf, *rest_leaves) over a param tree of model `cfg` (unboxed,
  with or without the 'params' level); every leaf must be a declared param."""
  def one(path, leaf, *others):
    names = dict_keys(path)
    param = spec_at(cfg, names)
    try:
      return fn(param, leaf, *others)
    except ValueError as err:   # name the param
      raise ValueError(f'param {"/".join(names)}: {err}') from None
  return jax.tree_util.tree_map_with_path(one, tree, *rest)


def spec_tree(tree: Any, cfg: ModelConfig) -> Any:
  """The same tree as `tree` (a param tree of `cfg`) with each leaf replaced by its spec."""
  return map_params(lambda s, _: s, tree, cfg)


def map_moments(fn: Callable[[ParamSpec, jax.Array], jax.Array], opt_state: Any,
                cfg: ModelConfig) -> Any:
  """fn(spec, leaf) on every leaf of an optimizer state that mirrors a param of model `cfg`
  (Adam's mu and nu, momentum buffers, ...); every other leaf (step counts, AdamP's
  projection counts, other groups' optax.MaskedNode, which have no leaves) is returned as
  is. A leaf mirrors a param when its path ends with the param's path and it has the
  param's shape -- optax states nest the params' tree unchanged, whatever wraps it
  (chain, multi_transform groups), which optax.tree_utils.tree_map_params cannot see
  through a multi_transform with a labels tree."""
  table = _traced(cfg)
  longest = max(len(k) for k in table)

  def one(path, leaf):
    keys = dict_keys(path)
    for n in range(min(longest, len(keys)), 0, -1):
      s = table.get(keys[-n:])
      if s is not None and tuple(getattr(leaf, 'shape', ())) == s.shape(cfg):
        return fn(s, leaf)
    return leaf
  return jax.tree_util.tree_map_with_path(one, opt_state)


def count(cfg: ModelConfig, roles: tuple[str, ...] = ROLES) -> int:
  """Number of parameters of Transformer(cfg) whose role is in `roles`."""
  return sum(math.prod(s.shape(cfg)) for s in _traced(cfg).values() if s.role in roles)
