"""train.trainable: train part of the model; the rest is frozen.

A frozen param gets no update, no weight decay and no optimizer state (no Adam moments
are allocated for it), and keeps its value bit for bit. Syntax: items separated by commas
(commas inside [...] belong to the item); a param trains when any item selects it:

  new                    the layers the run's last growth added (LLaMA-Pro: train only the
                         inserted blocks); before the growth everything trains
  GLOB                   fnmatch over the param path joined by '/': 'embed/*', 'head/*',
                         '*norm*', 'layers/mlp/*' (the MLPs of every layer)
  layers[RANGES][/GLOB]  the given layers of the scanned params (RANGES as 0-3,8), all of
                         them or those whose path below 'layers/' matches GLOB:
                         'layers[30-31]', 'layers[0-3]/attn/*'

The scanned params hold every layer in one array, so a selection of layers is a selection
of rows: the optimizer sees only those rows (`rows_only` gathers them before the inner
optimizer and scatters its update back), and its state has one row per trainable layer.
Whole frozen params go to an optax.set_to_zero() group of optax.multi_transform, which
has no state (jaxlab.optim.build). Frozen gradients are zeroed before clipping, so the
global norm is the trainable params' (as torch's clip_grad_norm_ over requires_grad
params).
"""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.config.types import ConfigError, ModelConfig, parse_ranges

KEY = 'train.trainable'
ALL = None   # rows of a param that trains whole


@dataclasses.dataclass(frozen=True)
class Item:
  text: str
  glob: str | None = None              # over the path ('layers/...' paths for layer items)
  layers: tuple[int, ...] | None = None
  new: bool = False


def _split(text: str) -> list[str]:
  items, depth, cur = [], 0, ''
  for ch in text:
    depth += (ch == '[') - (ch == ']')
    if ch == ',' and depth == 0:
      items.append(cur.strip())
      cur = ''
    else:
      cur += ch
  items.append(cur.strip())
  return [i for i in items if i]


def parse(text: str) -> list[Item]:
  """The items of a train.trainable value; ConfigError on a malformed one."""
  items = []
  for raw in _split(text):
    if raw == 'new':
      items.append(Item(raw, new=True))
    elif raw.startswith('layers['):
      close = raw.find(']')
      rest = raw[close + 1:]
      if close < 0 or (rest and not rest.startswith('/')):
        raise ConfigError(f'{KEY}: {raw!r} is not layers[RANGES] or layers[RANGES]/GLOB '
                          '(e.g. layers[0-3,8]/mlp/*)')
      layers = parse_ranges(raw[len('layers['):close], f'{KEY} item {raw!r}')
      items.append(Item(raw, glob='layers' + (rest or '/*'), layers=layers))
    else:
      items.append(Item(raw, glob=raw))
  if not items:
    raise ConfigError(f"{KEY}={text!r} selects nothing; leave it empty to train every param")
  return items


def resolve(text: str, cfg: ModelConfig, new_layers: Sequence[bool] | None,
            specs: dict) -> dict[tuple[str, ...], tuple[int, ...] | None]:
  """{param path: ALL (trains whole) | trainable layer indices (a scanned param; () when
  frozen)} for model `cfg` with schema `specs` (jaxlab.models.schema.specs(cfg)).
  new_layers: which layers the last growth added (None: no growth). ConfigError for an
  item that selects nothing, or that names a layer the model lacks."""
  n = cfg.n_layers
  rows: dict[tuple[str, ...], set[int]] = {p: set() for p in specs}
  for item in parse(text):
    hit = False
    if item.new:
      if new_layers is None:
        raise ConfigError(f"{KEY}: 'new' means the layers the run's last growth added, and "
                          'this run has no growth (launch.py grow ... train.trainable=new)')
      new = [i for i, flag in enumerate(new_layers) if flag]
      for p, param in specs.items():
        if param.stacked and new:
          rows[p].update(new)
          hit = True
    else:
      bad = [i for i in item.layers or () if i >= n]
      if bad:
        raise ConfigError(f'{KEY}: {item.text!r} names layers {bad}; the model has layers '
                          f'0..{n - 1}')
      for p, param in specs.items():
        if fnmatch.fnmatchcase('/'.join(p), item.glob) and (param.stacked or not item.layers):
          rows[p].update(item.layers if item.layers is not None else range(n))
          hit = True
    if not hit:
      raise ConfigError(f'{KEY}: {item.text!r} selects no param; params: '
                        f'{", ".join("/".join(p) for p in specs)}')
  out = {}
  for p, param in specs.items():
    if not param.stacked:
      out[p] = ALL if rows[p] else ()
    else:
      out[p] = ALL if len(rows[p]) == n else tuple(sorted(rows[p]))
  return out


def _path(path) -> tuple[str, ...]:
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def rows_only(inner: optax.GradientTransformation,
              partial: dict[tuple[str, ...], tuple[int, ...]]) -> optax.GradientTransformation:
  """`inner` applied to the listed rows (axis 0) of the params in `partial` ({path: rows})
  and to every other param whole: its state holds only those rows; the other rows'
  updates are 0."""
  def take(tree):
    def one(path, x):
      rows = partial.get(_path(path), ALL)
      return x if rows is ALL else x[np.asarray(rows)]
    return jax.tree_util.tree_map_with_path(one, tree)

  def init(params):
    return inner.init(take(params))

  def update(updates, state, params=None):
    small, state = inner.update(take(updates), state, None if params is None else take(params))

    def put(path, full, part):
      rows = partial.get(_path(path), ALL)
      return part if rows is ALL else jnp.zeros_like(full).at[np.asarray(rows)].set(part)
    return jax.tree_util.tree_map_with_path(put, updates, small), state
  return optax.GradientTransformation(init, update)


def zero_frozen(table: dict[tuple[str, ...], tuple[int, ...] | None]
                ) -> optax.GradientTransformation:
  """Sets the gradients of frozen params and rows to 0 (before clipping)."""
  def one(path, g):
    rows = table.get(_path(path), ALL)
    if rows is ALL:
      return g
    mask = np.zeros(g.shape[0], bool)
    mask[list(rows)] = True
    return jnp.where(mask.reshape((-1,) + (1,) * (g.ndim - 1)), g, jnp.zeros_like(g))

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(one, updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
