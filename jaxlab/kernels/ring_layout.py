"""Token layouts for ring attention over n devices, and the causal work each device does.

A sequence of T tokens is cut into 2n chunks of c = T / (2n) tokens. A layout says which
two chunks device i holds; its local sequence is those two chunks in increasing global
order (so a local causal mask is the global one on the device's own tokens):
  contiguous  chunks 2i and 2i + 1 (plain sharding). Under a causal mask device i's
              queries see the keys of devices 0..i only, so its work grows with i: the last
              device computes 4n - 1 chunk blocks, the first 3.
  zigzag      chunks i and 2n - 1 - i: one early and one late chunk, so every device
              computes 2n + 1 chunk blocks (Llama 3's context parallelism; the "zigzag" of
              ring-flash-attention; MaxText's load-balanced context parallelism).

Why zigzag rather than striped (token t on device t mod n; Brandon et al. 2023, "Striped
Attention"): under zigzag every (query chunk, key chunk) block is exactly one of fully
visible, the causal diagonal, or fully masked, so the per-block attention needs only the
plain causal / non-causal masks every fused kernel has, and masked blocks are skipped
whole. Under striped every block is a diagonal shifted by one token for half the device
pairs (a mask offset no fused backend here takes), and no block is ever fully masked, so
skipping is left to the kernel's tiles. Both balance the work; zigzag to within zero
blocks, striped to within the diagonal's rounding.

`order`, `to_layout` and `from_layout` permute the tokens of a global array (positions
and segment ids must be computed before the permutation: they are the natural order's);
`chunks` and `block_kind` are what the ring evaluates per step (on traced device indices)
and what `causal_block_counts` counts (on Python ints): one definition for both.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

LAYOUTS = ('zigzag', 'contiguous')
SKIP, FULL, DIAGONAL = 0, 1, 2      # kinds of a (query chunk, key chunk) block


def check_layout(layout: str, T: int, n: int):
  if layout not in LAYOUTS:
    raise ValueError(f'ring layout {layout!r} is not known; allowed: {", ".join(LAYOUTS)}')
  if T % (2 * n):
    raise ValueError(f'ring attention over {n} devices cuts the sequence into 2 x {n} chunks; '
                     f'T={T} is not a multiple of {2 * n}')


def chunks(layout: str, n: int, device):
  """The (earlier, later) chunk indices device `device` holds; `device` may be traced."""
  if layout == 'zigzag':
    return device, 2 * n - 1 - device
  return 2 * device, 2 * device + 1


def block_kind(q_chunk, kv_chunk, causal: bool):
  """SKIP, FULL or DIAGONAL for the block of a query chunk against a key chunk."""
  if not causal:
    return FULL
  return jnp.where(q_chunk > kv_chunk, FULL, jnp.where(q_chunk == kv_chunk, DIAGONAL, SKIP))


def order(T: int, n: int, layout: str = 'zigzag') -> np.ndarray:
  """order[p] = the global token index at position p of the layout's sequence."""
  check_layout(layout, T, n)
  c = T // (2 * n)
  idx = [k for i in range(n) for k in chunks(layout, n, i)]
  return np.concatenate([np.arange(k * c, (k + 1) * c) for k in idx])


def to_layout(x, n: int, layout: str = 'zigzag', axis: int = 1):
  """Natural token order -> the layout's order along `axis` (identity when n == 1)."""
  if n == 1:
    return x
  return jnp.take(x, order(x.shape[axis], n, layout), axis=axis)


def from_layout(x, n: int, layout: str = 'zigzag', axis: int = 1):
  """The layout's token order -> natural order along `axis` (inverse of to_layout)."""
  if n == 1:
    return x
  return jnp.take(x, np.argsort(order(x.shape[axis], n, layout)), axis=axis)


def causal_block_counts(n: int, layout: str = 'zigzag', causal: bool = True) -> list[int]:
  """Per device, the (c x c) chunk blocks its n ring steps compute (kinds FULL and
  DIAGONAL; SKIP blocks are not run). A DIAGONAL block does about half a FULL block's
  work, and every device gets two of them under either layout."""
  counts = []
  for i in range(n):
    mine = chunks(layout, n, i)
    total = 0
    for step in range(n):
      theirs = chunks(layout, n, (i - step) % n)
      total += sum(int(block_kind(a, b, causal) != SKIP) for a in mine for b in theirs)
    counts.append(total)
  return counts
