"""A growth event inside a run: the train state of one phase -> the state of the next.

Params go through the phase's operator (grow, coalesce, or de-coalesce + interpolate).
The optimizer state follows growth.optimizer:
  reset  fresh moments (tx.init of the new params); the lr schedule restarts with warmup
         over the remaining steps -- what the G_stack authors' code does;
  grow   Adam's moments (mu, nu) go through the same operator (new entries zero for
         'zero' / 'random'; de-coalesce for the way back up a V-cycle), and the step
         counts and the lr schedule carry on as if nothing happened.
The step counter never changes: tokens, FLOPs and the data order continue across it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxlab.config_types import Config
from jaxlab.growth import plan as plan_lib


def _map_moments(opt_state, params, fn):
  """Applies fn to every sub-tree of opt_state shaped like the param tree (Adam's mu,
  nu); counts and empty states pass through. The optimizer keeps one state per param
  group (optax.multi_transform), where another group's leaves are optax.MaskedNode:
  fn sees zeros there and they stay MaskedNode (a param never changes group)."""
  keys = set(params)

  def is_moment(x):
    return isinstance(x, dict) and set(x) == keys

  def is_masked(x):
    return isinstance(x, optax.MaskedNode)

  def grow_moment(x):
    filled = jax.tree.map(lambda m, p: jnp.zeros_like(p) if is_masked(m) else m, x, params,
                          is_leaf=is_masked)
    return jax.tree.map(lambda m, g: m if is_masked(m) else g, x, fn(filled),
                        is_leaf=is_masked)

  return jax.tree.map(lambda x: grow_moment(x) if is_moment(x) else x, opt_state,
                      is_leaf=is_moment)


def transition(cfg: Config, phases: list, k: int, state, tx, rng):
  """State at the end of phase k-1 -> state at the start of phase k (jittable)."""
  from jaxlab.growth import grow, multilevel
  event, src, dst, g = phases[k].event, phases[k - 1].model, phases[k].model, cfg.growth
  stash = dict(state.stash)
  if event == 'grow':
    def op(tree, moments):
      return grow(tree, src, dst, g.method, layers=g.layers or None,
                  width_method=plan_lib.width_method(cfg), rng=rng, moments=moments)
    params = op(state.params, False)
  elif event == 'coalesce':
    def op(tree, moments):
      return multilevel.coalesce(tree, src, dst, grouping=g.grouping, moments=moments)
    params = op(state.params, False)
    stash[str(phases[k - 1].level)] = state.params   # the finer model, as it is now
  elif event == 'interpolate':
    def op(tree, moments):
      return multilevel.decoalesce(tree, src, dst, grouping=g.grouping, moments=moments)
    params = multilevel.interpolate(stash.pop(str(phases[k].level)), state.params, src, dst,
                                    alpha=g.alpha, grouping=g.grouping)
  else:
    raise ValueError(f'phase {k} has no growth event ({event!r})')
  if g.optimizer == 'reset':
    opt_state = tx.init(params)
  else:
    opt_state = _map_moments(state.opt_state, state.params, lambda t: op(t, True))
  return state.replace(params=params, opt_state=opt_state, stash=stash)
