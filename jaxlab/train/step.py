"""The jitted train and eval steps.

A batch row holds seq_len + 1 tokens; inputs are tokens[:, :-1], targets tokens[:, 1:].
A target counts only when it continues the same document as its input (same, non-zero
segment id), so packed documents never learn to predict across a boundary.

Gradient accumulation (train.microbatches = M > 1): every step function runs its batch as
M sequential microbatches (a lax.scan, so one microbatch's activations are live at a
time) and sums what they give. The train step sums each microbatch's token-loss total
divided by the WHOLE batch's target count, and its gradient: the mean loss of the unsplit
batch and its gradient, up to float32 rounding, then one optimizer update. Microbatch i
holds rows i, i + M, i + 2M, ...: each device's contiguous block of rows splits evenly
over the microbatches, so the split moves no data and every microbatch stays sharded
over the data-parallel axes (train.batch_size divides by M x that size:
jaxlab.config.checks.check_microbatches).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab.models.transformer import positions_from_segments
from jaxlab.optim import fired_fraction
from jaxlab.parallel import DEFAULT_RULES, activation_rules
from jaxlab.train import measure
from jaxlab.train.state import TrainState


def target_mask(segment_ids_BxS):
  """BxT: the targets that count (same, non-zero segment as their input); S = T + 1."""
  seg_in_BxT, seg_out_BxT = segment_ids_BxS[:, :-1], segment_ids_BxS[:, 1:]
  return (seg_in_BxT == seg_out_BxT) & (seg_in_BxT != 0)


def token_losses(model, params, batch, layer_gate_L=None):
  """(loss of every target BxT, mask of the targets that count BxT, input segment ids)."""
  tokens, segment_ids = batch['tokens'], batch['segment_ids']
  inputs_BxT, targets_BxT = tokens[:, :-1], tokens[:, 1:]
  seg_in_BxT = segment_ids[:, :-1]
  logits_BxTxV = model.apply({'params': params}, inputs_BxT, seg_in_BxT, layer_gate_L)
  mask_BxT = target_mask(segment_ids)
  losses_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
  return losses_BxT, mask_BxT, seg_in_BxT


def loss_terms(model, params, batch, layer_gate_L=None):
  """(sum of token losses, number of target tokens) for one batch."""
  losses_BxT, mask_BxT, _ = token_losses(model, params, batch, layer_gate_L)
  return jnp.sum(losses_BxT * mask_BxT), jnp.sum(mask_BxT)


def position_edges(seq_len: int) -> tuple[int, ...]:
  """Bucket edges of train.eval_positions: 0, T/16, T/8, T/4, T/2, T (the context a target
  had, in tokens of its document piece before it; duplicates dropped for short T)."""
  return tuple(sorted({0, *(seq_len // d for d in (16, 8, 4, 2)), seq_len}))


def position_terms(model, params, batch, edges, layer_gate_L=None):
  """(sums K, counts K) of the token losses by bucket of the target's input position in its
  document piece (positions_from_segments: where RoPE puts it), edges from position_edges."""
  losses_BxT, mask_BxT, seg_in_BxT = token_losses(model, params, batch, layer_gate_L)
  bucket_BxT = jnp.searchsorted(jnp.asarray(edges[1:-1]), positions_from_segments(seg_in_BxT),
                                side='right')
  onehot_BxTxK = jax.nn.one_hot(bucket_BxT, len(edges) - 1) * mask_BxT[..., None]
  return (jnp.einsum('bt,btk->k', losses_BxT, onehot_BxTxK), jnp.sum(onehot_BxTxK, axis=(0, 1)))


def _no_gate(step):
  return None


def split_microbatches(batch, microbatches: int):
  """{name: NxS} -> {name: MxBxS}, M = microbatches, B = N / M; microbatch i holds rows
  i, i + M, ... (the module docstring says why), constrained to the data-parallel axes."""
  def split(x_NxS):
    n = x_NxS.shape[0]
    x_MxBxS = x_NxS.reshape(n // microbatches, microbatches, *x_NxS.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x_MxBxS, (None, 'batch') + (None,) * (x_NxS.ndim - 1))
  return jax.tree.map(split, batch)


def sum_over_microbatches(fn, batch, microbatches: int):
  """fn(batch), for an fn that returns a pytree of sums, as the sum of fn over
  `microbatches` sequential microbatches (a lax.scan); plain fn(batch) for 1."""
  if microbatches == 1:
    return fn(batch)
  pieces = split_microbatches(batch, microbatches)
  shapes = jax.eval_shape(fn, jax.tree.map(lambda x: x[0], pieces))

  def body(acc, piece):
    return jax.tree.map(jnp.add, acc, fn(piece)), None
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  return jax.lax.scan(body, zeros, pieces)[0]


def train_step_fn(model, tx, lr_schedule, mesh, gate_fn=_no_gate, weight_stats: bool = False,
                  microbatches: int = 1, rules=DEFAULT_RULES):
  """The train step as a plain function (state, batch) -> (state, metrics), to jit
  (make_train_step) or to vmap over a population (jaxlab.train.population_program).
  lr_schedule: global step -> lr (logged only; the optimizer holds its own schedule).
  gate_fn: global step -> per-layer gate for the model (growth's ramp) or None.
  weight_stats: also return the weight diagnostics (train.weight_stats).
  microbatches: train.microbatches (gradient accumulation, the module docstring).
  rules: the logical axis rules of the activations (a population whose members are spread
  over the devices splits a member's batch over fsdp only)."""
  def loss_and_grads(params, batch, gate):
    """(the batch's mean token loss, its gradient)."""
    count = jnp.maximum(jnp.sum(target_mask(batch['segment_ids'])), 1)

    def share(params, piece):   # the piece's part of the whole batch's mean loss
      return loss_terms(model, params, piece, gate)[0] / count
    return sum_over_microbatches(lambda piece: jax.value_and_grad(share)(params, piece),
                                 batch, microbatches)

  def train_step(state: TrainState, batch):
    gate = gate_fn(state.step)
    with activation_rules(mesh, rules):
      loss, grads = loss_and_grads(state.params, batch, gate)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads),
               'param_norm': optax.tree.norm(params), 'lr': lr_schedule(state.step)}
    if weight_stats:
      metrics.update(measure.weight_stats(state.params, params, model.cfg))
    fired = fired_fraction(opt_state)
    if fired is not None:   # AdamP / SGDP: share of param entries projected this step
      metrics['proj_fired'] = fired
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
  return train_step


def make_train_step(model, tx, lr_schedule, state_shardings, batch_sharding, gate_fn=_no_gate,
                    weight_stats: bool = False, microbatches: int = 1):
  """train_step_fn jitted over the state's and the batch's shardings; donates the state."""
  train_step = train_step_fn(model, tx, lr_schedule, batch_sharding.mesh, gate_fn,
                             weight_stats, microbatches)
  batch_shardings = {'tokens': batch_sharding, 'segment_ids': batch_sharding}
  return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, None), donate_argnums=0)


def make_eval_step(model, param_shardings, batch_sharding, gate_fn=_no_gate,
                   microbatches: int = 1):
  """(params, batch, step) -> (sum of token losses, token count)."""
  def eval_step(params, batch, step):
    with activation_rules(batch_sharding.mesh):
      return sum_over_microbatches(lambda b: loss_terms(model, params, b, gate_fn(step)),
                                   batch, microbatches)

  batch_shardings = {'tokens': batch_sharding, 'segment_ids': batch_sharding}
  return jax.jit(eval_step, in_shardings=(param_shardings, batch_shardings, None))


def make_position_eval_step(model, param_shardings, batch_sharding, edges, gate_fn=_no_gate,
                            microbatches: int = 1):
  """(params, batch, step) -> (loss sums, token counts) by position bucket (edges)."""
  def eval_step(params, batch, step):
    with activation_rules(batch_sharding.mesh):
      return sum_over_microbatches(
          lambda b: position_terms(model, params, b, edges, gate_fn(step)), batch, microbatches)

  batch_shardings = {'tokens': batch_sharding, 'segment_ids': batch_sharding}
  return jax.jit(eval_step, in_shardings=(param_shardings, batch_shardings, None))
