"""Multi-level training operators (Zou et al., ICLR 2024): coalesce, de-coalesce, interpolate.

Between a big model config `big` and a small one `small` that share vocab, tie_embeddings
and head dim K. Every width dim of the small model (d_model D, ff_dim F, query heads H,
kv heads G) and its n_layers L divide the big model's by an integer factor k_X >= 1.

Width. Each small unit s merges a group of k big units; `grouping` picks the groups:
  'stride'    big unit b belongs to small unit b mod n_small (s merges s, s + n_small, ...;
              the paper's default);
  'adjacent'  big unit b belongs to small unit b // k (neighbours s*k .. s*k + k - 1).
F is the (n_small, n_big) 0/1 matrix of that map (`coalescing_matrix`) and norm(F) its rows
divided by k. Units are residual dims, d_ff units and whole heads (the head dim is fixed:
RoPE's frequencies depend on it). In Flax's (in, out) layout a matrix coalesces as

  W' = F_in . W . norm(F_out)^T      (PyTorch (out, in): W' = norm(F_out) . W . F_in^T)

-- each small output unit is the AVERAGE of its group's outputs and each small input unit
the SUM over its group's inputs -- and de-coalesces as W = F_in^T . W' . F_out / k_in:
every big unit gets a copy of its small one, and input-side weights are divided by the
group size, so the k copies sum back to the small weight. Vectors on a width axis (norm
gains, the embedding's D columns -- outputs of the embedding) are averaged / copied.
Hence coalesce(decoalesce(w)) == w, and de-coalescing the width is function preserving:
a copied residual stream has the same RMS statistics, every sum over a copied input axis
counts each small term k times and divides it by k, and each big query head reads a copy
of the kv head its small head reads (see GQA below). With tied embeddings the embedding
is both the input table (output side: copy) and the readout (input side: needs / k); the
final norm gain feeds only the readout, so it carries the readout's input-side role
(summed on coalesce, divided by k_D on de-coalesce) and the tied model stays exact too.

GQA. Query head h reads kv head h // (H / G). Coalescing is consistent when, for every big
query head h, the small kv head that merges h's kv head is the kv head read by the small
query head that merges h; then a merged query head reads the merge of the kv heads its
members read. 'adjacent' satisfies this for any factors; 'stride' when k_H == k_G or the
small model has a single kv head.
Other combinations raise. k_H = 1 < k_G with 'adjacent' is GQA's mean-pooling of kv heads.

Depth (matrix R of shape (L_small, L_big)), by `depth_grouping`:
  'adjacent'  small layer i is the mean of big layers i*k .. i*k + k - 1; de-coalescing
              copies: big layer b = small layer b // k ([0, 0, 1, 1, ...]). The paper's
              operator as its text describes it, and the mapper's default without a scheme.
  'stride'    small layer i is the mean of big layers i, i + L_small, ...; de-coalescing
              gives the small stack k times: big layer b = small layer b mod L_small
              ([0, 1, ..., 0, 1, ...]). What the authors' scripts run: the mapper's
              depth_scheme [[0, 6], [1, 7], ..., [5, 11]] in map_tools/config/L6-H6.json
              (tests/test_multilevel.py holds jaxlab against a port of that mapping).
Duplicating layers is not function preserving (each block then runs k times).

Which side of a leaf each dim is on comes from the parameter schema (jaxlab.models.schema):
dims tagged 'split' are input sides (summed / divided), 'copy' and 'zero' output sides or
vectors (averaged / copied), 'keep' never changes, 'layer' is the depth axis.

muP. Forward multipliers come from jaxlab.models.parametrization; the operators act on the
effective weights (effective_multiplier(cfg, spec) * W: the attention scale included for
wq, the readout's ratio for a tied final gain), so each leaf is finally scaled by
parametrization.growth_ratio(spec, src, dst). All ratios are 1 under 'sp'.

Optimizer moments (moments=True; Adam's mu and nu, trees shaped like params): no muP
rescale, and every axis is averaged / copied (no input-side sum or division by k). Adam's
step mu / (sqrt(nu) + eps) is invariant to a positive rescaling of a leaf's gradients,
and a /k on mu without /k^2 on nu would change it by sqrt(k), so moments stay in the
units they have. Averages, copies and convex interpolation keep nu >= 0, and
coalesce(decoalesce(m)) == m holds for moments too.

Trees are unboxed (nn.unbox) param dicts, with or without the top 'params' level. Each
operator is one jitted tree map, compiled once per (configs, grouping, moments); it may
be called inside the caller's jit. `coalesce_leaf` / `decoalesce_leaf` are the per-leaf
operators (the growth event maps them over optimizer moments).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.config.types import ModelConfig
from jaxlab.models import parametrization as pz
from jaxlab.models import schema
from jaxlab.models.schema import ParamSpec

GROUPINGS = ('stride', 'adjacent')

# The axes multi-level training merges (the head dim, vocab: 'keep'; layers: 'layer').
MERGED = ('embed', 'mlp', 'heads', 'kv_heads', 'layers')
_NAMES = {'layers': 'n_layers', 'embed': 'd_model', 'mlp': 'ff_dim', 'heads': 'n_heads',
          'kv_heads': 'kv_heads'}


def _check_grouping(grouping: str):
  if grouping not in GROUPINGS:
    raise ValueError(f'grouping={grouping!r} is not known; allowed: '
                     f'{", ".join(map(repr, GROUPINGS))}')


def unit_groups(n_big: int, n_small: int, grouping: str = 'stride') -> np.ndarray:
  """(n_big,) int array: the small unit that merges each big unit."""
  _check_grouping(grouping)
  if n_small < 1 or n_big % n_small:
    raise ValueError(f'{n_big} big units cannot be merged into {n_small} small units: '
                     'n_small must be >= 1 and divide n_big')
  b = np.arange(n_big)
  return b % n_small if grouping == 'stride' else b // (n_big // n_small)


def coalescing_matrix(n_big: int, n_small: int, grouping: str = 'stride') -> np.ndarray:
  """F, shape (n_small, n_big): F[s, b] = 1 where small unit s merges big unit b."""
  groups = unit_groups(n_big, n_small, grouping)
  return (groups[None, :] == np.arange(n_small)[:, None]).astype(np.float32)


def _factors(big: ModelConfig, small: ModelConfig, grouping: str) -> dict[str, int]:
  """k per merged axis; raises unless `small` is `big` divided by integer factors."""
  _check_grouping(grouping)
  for name in ('vocab_size', 'tie_embeddings'):
    if getattr(big, name) != getattr(small, name):
      raise ValueError(f'{name} differs between the big ({getattr(big, name)}) and the small '
                       f'({getattr(small, name)}) model; multi-level training keeps it fixed')
  if big.dim_per_head != small.dim_per_head:
    raise ValueError(f'head dim differs: big {big.dim_per_head}, small {small.dim_per_head}; '
                     'coalescing merges whole heads and keeps the head dim (RoPE depends on '
                     'it): set head_dim explicitly or change n_heads with d_model')
  factors = {}
  for axis in MERGED:
    n_big, n_small = schema.axis_size(big, axis), schema.axis_size(small, axis)
    if n_small < 1 or n_small > n_big or n_big % n_small:
      raise ValueError(f'{_NAMES[axis]}: the small model has {n_small}, the big one {n_big}; '
                       'the small size must divide the big one (an integer factor >= 1)')
    factors[axis] = n_big // n_small
  for cfg, which in ((big, 'big'), (small, 'small')):
    if cfg.n_heads % cfg.kv_heads:
      raise ValueError(f'the {which} model has n_heads={cfg.n_heads} not a multiple of '
                       f'kv_heads={cfg.kv_heads}')
  _check_gqa(big, small, grouping)
  return factors


def _check_gqa(big: ModelConfig, small: ModelConfig, grouping: str):
  """Each big query head's kv head must merge into its small query head's kv head."""
  q_small = unit_groups(big.n_heads, small.n_heads, grouping)
  kv_big = np.arange(big.n_heads) // (big.n_heads // big.kv_heads)
  kv_merged = unit_groups(big.kv_heads, small.kv_heads, grouping)[kv_big]
  kv_wanted = q_small // (small.n_heads // small.kv_heads)
  if not np.array_equal(kv_merged, kv_wanted):
    raise ValueError(
        f'grouping={grouping!r} breaks grouped-query attention for n_heads {big.n_heads} -> '
        f'{small.n_heads}, kv_heads {big.kv_heads} -> {small.kv_heads}: a merged query head '
        "would read a kv head its members do not read. Use grouping='adjacent' (consistent "
        'for any factors) or divide n_heads and kv_heads by the same factor')


def _map(fn, tree, cfg: ModelConfig, *rest):
  """tree_map of fn(spec, leaf, *rest_leaves) after checking every leaf's shape against
  model `cfg` and that the tree holds every param of it."""
  table, seen = schema.specs(cfg), set()

  def check(path, leaf, *others):
    if not all(isinstance(k, jax.tree_util.DictKey) for k in path):
      raise ValueError(f'tree path {jax.tree_util.keystr(path)} is not a dict key path; '
                       'pass an unboxed param tree (flax.linen.unbox) or a moment tree '
                       'shaped like it')
    names = schema.dict_keys(path)
    param = schema.spec_at(cfg, names)
    seen.add(names[1:] if names[:1] == ('params',) else names)
    for x in (leaf, *others):
      if tuple(x.shape) != param.shape(cfg):
        raise ValueError(f'param {"/".join(names)} has shape {tuple(x.shape)}; model '
                         f'{_short(cfg)} needs {param.shape(cfg)}')
    return fn(param, leaf, *others)

  out = jax.tree_util.tree_map_with_path(check, tree, *rest)
  missing = sorted(set(table) - seen)
  if missing:
    raise ValueError(f'param tree does not match model {_short(cfg)}: missing '
                     f'{["/".join(k) for k in missing]}')
  return out


def _short(cfg: ModelConfig) -> str:
  return (f'(L={cfg.n_layers}, D={cfg.d_model}, F={cfg.ff_dim}, H={cfg.n_heads}, '
          f'G={cfg.kv_heads}, K={cfg.dim_per_head})')


def _merge(x: jax.Array, axis: int, k: int, grouping: str, reduce: str) -> jax.Array:
  """Sums or averages the k big units of each group along `axis`."""
  n_small = x.shape[axis] // k
  split = (k, n_small) if grouping == 'stride' else (n_small, k)
  x = x.reshape(x.shape[:axis] + split + x.shape[axis + 1:])
  group_axis = axis if grouping == 'stride' else axis + 1
  return x.sum(group_axis) if reduce == 'sum' else x.mean(group_axis)


def _copy(x: jax.Array, axis: int, k: int, grouping: str) -> jax.Array:
  """Gives every big unit along `axis` a copy of its small unit."""
  if grouping == 'stride':
    return jnp.concatenate([x] * k, axis=axis)
  return jnp.repeat(x, k, axis=axis)


def coalesce_leaf(param: ParamSpec, x: jax.Array, factors: dict[str, int], grouping: str,
                  moments: bool = False, ratio: float = 1.0,
                  depth_grouping: str = 'adjacent') -> jax.Array:
  """One leaf of the big model -> the small model: each merged dim's groups are summed
  (input side, 'split') or averaged (output side / vector; always for moments), layers
  are averaged in `depth_grouping`'s groups; then times `ratio` (the muP growth ratio)."""
  for axis, (name, tag) in enumerate(zip(param.axes, param.growth)):
    k = factors.get(name, 1)
    if k == 1 or tag == 'keep':
      continue
    if tag == 'layer':
      x = _merge(x, axis, k, depth_grouping, 'mean')
    else:
      x = _merge(x, axis, k, grouping, 'sum' if tag == 'split' and not moments else 'mean')
  return x if ratio == 1.0 else x * ratio


def decoalesce_leaf(param: ParamSpec, x: jax.Array, factors: dict[str, int], grouping: str,
                    moments: bool = False, ratio: float = 1.0,
                    depth_grouping: str = 'adjacent') -> jax.Array:
  """One leaf of the small model -> the big model: every big unit gets a copy of its
  small one, input-side copies divided by the group size (not for moments)."""
  divisor = 1
  for axis, (name, tag) in enumerate(zip(param.axes, param.growth)):
    k = factors.get(name, 1)
    if k == 1 or tag == 'keep':
      continue
    x = _copy(x, axis, k, depth_grouping if tag == 'layer' else grouping)
    if tag == 'split' and not moments:
      divisor *= k
  x = x if divisor == 1 else x / divisor
  return x if ratio == 1.0 else x * ratio


def _ratios(src: ModelConfig, dst: ModelConfig, moments: bool) -> tuple:
  return tuple((p, 1.0 if moments else pz.growth_ratio(p, src, dst))
               for p in schema.specs(src).values())


@functools.lru_cache(maxsize=64)
def _compiled(op: str, src: ModelConfig, dst: ModelConfig, grouping: str, moments: bool,
              ratios: tuple, depth_grouping: str):
  """One jitted tree map per (op, configs, grouping, moments, muP ratios); the ratios are
  read from the table by the caller, so the cache follows changes to the table."""
  big, small = (src, dst) if op == 'coalesce' else (dst, src)
  factors, ratio_of = _factors(big, small, grouping), dict(ratios)   # spec -> ratio
  leaf = coalesce_leaf if op == 'coalesce' else decoalesce_leaf
  return jax.jit(lambda tree: _map(
      lambda p, x: leaf(p, x, factors, grouping, moments, ratio_of[p], depth_grouping), tree,
      src))


def leaf_operator(op: str, src: ModelConfig, dst: ModelConfig, *, grouping: str = 'stride',
                  moments: bool = False, depth_grouping: str = 'adjacent'):
  """fn(spec, leaf) -> leaf: one leaf of model src through 'coalesce' (src big, dst small)
  or 'decoalesce' (src small, dst big) -- for mapping over optimizer moments."""
  big, small = (src, dst) if op == 'coalesce' else (dst, src)
  factors = _factors(big, small, grouping)
  _check_grouping(depth_grouping)
  leaf = coalesce_leaf if op == 'coalesce' else decoalesce_leaf

  def one(param: ParamSpec, x):
    r = 1.0 if moments else pz.growth_ratio(param, src, dst)
    return leaf(param, x, factors, grouping, moments, r, depth_grouping)
  return one


def coalesce(tree, big: ModelConfig, small: ModelConfig, *, grouping: str = 'stride',
             moments: bool = False, depth_grouping: str = 'adjacent'):
  """Params (or Adam moments) of model `big` -> the coalesced tree of model `small`."""
  _factors(big, small, grouping)
  _check_grouping(depth_grouping)
  return _compiled('coalesce', big, small, grouping, moments,
                   _ratios(big, small, moments), depth_grouping)(tree)


def decoalesce(tree, small: ModelConfig, big: ModelConfig, *, grouping: str = 'stride',
               moments: bool = False, depth_grouping: str = 'adjacent'):
  """Params (or Adam moments) of model `small` -> the de-coalesced tree of model `big`."""
  _factors(big, small, grouping)
  _check_grouping(depth_grouping)
  return _compiled('decoalesce', small, big, grouping, moments,
                   _ratios(small, big, moments), depth_grouping)(tree)


@jax.jit
def _mix(big_tree, up_tree, alpha):
  return jax.tree.map(lambda b, u: (1.0 - alpha) * b + alpha * u, big_tree, up_tree)


def interpolate(big_tree, small_tree, small: ModelConfig, big: ModelConfig, *,
                alpha: float = 0.25, grouping: str = 'stride', moments: bool = False,
                depth_grouping: str = 'adjacent'):
  """(1 - alpha) * big_tree + alpha * decoalesce(small_tree); alpha (a Python number) in
  [0, 1]. alpha = 0 returns big_tree's leaves and alpha = 1 decoalesce(small_tree), exactly."""
  alpha = float(alpha)
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'alpha={alpha} must be in [0, 1] (the weight of the de-coalesced small '
                     'model; the paper uses 0.25)')
  up = decoalesce(small_tree, small, big, grouping=grouping, moments=moments,
                  depth_grouping=depth_grouping)
  _map(lambda p, b, u: None, big_tree, big, up)    # checks big_tree against `big`
  if alpha == 1.0:
    return up
  if alpha == 0.0:
    return big_tree
  return _mix(big_tree, up, alpha)   # a weakly typed scalar: keeps the trees' dtype


def coarsen(cfg: ModelConfig, *, width: int = 2, depth: int = 1) -> ModelConfig:
  """The next-coarser model: d_model, ff_dim, n_heads divided by `width` (head dim kept,
  d_ff and head_dim made explicit), kv_heads too when divisible (else kept), n_layers by
  `depth`. Kept kv heads need grouping='adjacent' unless kv_heads == 1."""
  for name, value in (('width', width), ('depth', depth)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'{name}={value!r} must be an integer >= 1')
  sizes = {'d_model': cfg.d_model, 'd_ff': cfg.ff_dim, 'n_heads': cfg.n_heads,
           'n_layers': cfg.n_layers}
  for name, value in sizes.items():
    k = depth if name == 'n_layers' else width
    if value % k:
      raise ValueError(f'{name}={value} is not divisible by the coarsening factor {k}')
  n_heads = cfg.n_heads // width
  kv = cfg.kv_heads // width if cfg.kv_heads % width == 0 else cfg.kv_heads
  if n_heads % kv:
    raise ValueError(f'kv_heads={cfg.kv_heads} cannot be coarsened with n_heads '
                     f'{cfg.n_heads} -> {n_heads}: neither {cfg.kv_heads} nor it divided by '
                     f'{width} divides {n_heads}')
  return dataclasses.replace(cfg, d_model=cfg.d_model // width, d_ff=cfg.ff_dim // width,
                             n_heads=n_heads, n_kv_heads=kv, head_dim=cfg.dim_per_head,
                             n_layers=cfg.n_layers // depth)


# ---------------------------------------------------------------------------- V-cycle

@dataclasses.dataclass(frozen=True)
class VCyclePhase:
  """One entry of a V-cycle schedule. event 'train' runs `steps` steps at `level` from
  global step `step`; 'coalesce' (level - 1 -> level) and 'interpolate' (de-coalesce
  level + 1, interpolate into the model of `level` stashed at its coalesce) happen at
  `step` and have steps == 0. Level 0 is the big model."""
  step: int
  event: str
  level: int
  steps: int = 0


def vcycle_schedule(total_steps: int, *, big_steps_before: int, small_steps: int,
                    levels: int = 1) -> list[VCyclePhase]:
  """Phases of a V-cycle over `total_steps` global training steps (every level's steps
  count once). Down: each level 0 .. levels-1 trains `big_steps_before` steps, then
  coalesces. The coarsest level trains `small_steps`. Up: each level levels-1 .. 1
  interpolates and trains `big_steps_before` steps again (so the phase of level l >= 1 is
  itself a V-cycle down to level l + 1); level 0 interpolates and trains the remaining
  total_steps - (2 levels - 1) big_steps_before - small_steps steps. Zero-length train
  phases are left out."""
  for name, value, low in (('total_steps', total_steps, 1), ('levels', levels, 1),
                           ('big_steps_before', big_steps_before, 0),
                           ('small_steps', small_steps, 1)):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      raise ValueError(f'{name}={value!r} must be an integer >= {low}')
  used = (2 * levels - 1) * big_steps_before + small_steps
  if used > total_steps:
    raise ValueError(f'total_steps={total_steps} is too short for a {levels}-level V-cycle: it '
                     f'needs (2 levels - 1) x big_steps_before + small_steps = {used} steps')
  phases, step = [], 0

  def train(level: int, n: int):
    nonlocal step
    if n:
      phases.append(VCyclePhase(step, 'train', level, n))
      step += n

  for level in range(levels):
    train(level, big_steps_before)
    phases.append(VCyclePhase(step, 'coalesce', level + 1))
  train(levels, small_steps)
  for level in range(levels - 1, -1, -1):
    phases.append(VCyclePhase(step, 'interpolate', level))
    train(level, big_steps_before if level else total_steps - step)
  assert step == total_steps, (step, total_steps)
  return phases


def train_steps_per_level(phases: list[VCyclePhase]) -> dict[int, int]:
  """Training steps spent at each level (level -> steps)."""
  out: dict[int, int] = {}
  for p in phases:
    if p.event == 'train':
      out[p.level] = out.get(p.level, 0) + p.steps
  return out


__all__ = ['GROUPINGS', 'VCyclePhase', 'coalesce', 'coalescing_matrix', 'coarsen', 'decoalesce',
           'interpolate', 'train_steps_per_level', 'unit_groups', 'vcycle_schedule']
