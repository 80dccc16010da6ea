"""A growth event inside a run: the train state of one phase -> the state of the next.

Params go through the phase's operator (grow, coalesce, or de-coalesce + interpolate).
The optimizer state follows growth.optimizer:
  reset  fresh moments (tx.init of the new params); the lr schedule restarts with warmup
         over the remaining steps -- what the G_stack authors' code does;
  grow   Adam's moments (mu, nu) go through the same operator (new entries zero for
         'zero' / 'random'; de-coalesce for the way back up a V-cycle), and the step
         counts and the lr schedule carry on as if nothing happened.
The step counter never changes: tokens, FLOPs and the data order continue across it.
A 'context' event (growth.seq_lens) changes only the sequence length and RoPE's base:
the state passes through unchanged and the lr schedule carries on.
"""
from __future__ import annotations

from jaxlab.config.types import Config
from jaxlab.growth import multilevel
from jaxlab.growth import plan as plan_lib
from jaxlab.growth.operators import grow, grower
from jaxlab.models import schema


def transition(cfg: Config, phases: list, k: int, state, tx, rng):
  """State at the end of phase k-1 -> state at the start of phase k (jittable)."""
  event, src, dst, g = phases[k].event, phases[k - 1].model, phases[k].model, cfg.growth
  if event == 'context':   # a new sequence length (and RoPE base): params, moments, lr go on
    return state
  stash = dict(state.stash)
  if event == 'grow':
    params = grow(state.params, src, dst, g.method, layers=g.layers or None,
                  width_method=plan_lib.width_method(cfg), rng=rng)
    moment = grower(src, dst, g.method, layers=g.layers or None,
                    width_method=plan_lib.width_method(cfg), moments=True)
  elif event == 'coalesce':
    params = multilevel.coalesce(state.params, src, dst, grouping=g.grouping,
                                 depth_grouping=g.depth_grouping)
    stash[str(phases[k - 1].level)] = state.params   # the finer model, as it is now
    moment = multilevel.leaf_operator('coalesce', src, dst, grouping=g.grouping, moments=True,
                                      depth_grouping=g.depth_grouping)
  elif event == 'interpolate':
    params = multilevel.interpolate(stash.pop(str(phases[k].level)), state.params, src, dst,
                                    alpha=g.alpha, grouping=g.grouping,
                                    depth_grouping=g.depth_grouping)
    moment = multilevel.leaf_operator('decoalesce', src, dst, grouping=g.grouping,
                                      moments=True, depth_grouping=g.depth_grouping)
  else:
    raise ValueError(f'phase {k} has no growth event ({event!r})')
  if g.optimizer == 'reset':
    opt_state = tx.init(params)
  else:   # every leaf of the optimizer state that mirrors a param of `src`, by the schema
    opt_state = schema.map_moments(moment, state.opt_state, src)
  return state.replace(params=params, opt_state=opt_state, stash=stash)
