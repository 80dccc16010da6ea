"""Packing for context-length growth: a batch is `lanes` contiguous token streams, so the
sequence length can change between two batches with no token skipped or repeated and
with the position in the corpus kept.

The training documents are the same shuffled, repeated stream as the grain pipeline's
(jaxlab.data.pipeline: this process's shard, shuffled by data.seed, [BOS] + tokens).
Lane b of `lanes` reads the stream's documents b, b + lanes, b + 2 lanes, ... one after
the other, and cuts them into rows of L + 1 tokens (a row's pieces are numbered by
segment ids 1, 2, ...; a piece that continues a document from the lane's previous row
does not start with BOS). A batch at length L holds `lanes` x (final / L) rows, lane by
lane: the tokens of a step are the same count at every length (final = data.seq_len),
and lane b's rows of one step are consecutive text.

The iterator's state is where each lane stands, (k, offset): document b + k lanes,
`offset` tokens into it. It does not depend on L, so `set_seq_len` re-packs from exactly
there, and a checkpoint's state resumes at either length.

This replaces the grain pipeline for runs with growth.seq_lens (its row-window shuffle,
data.shuffle_rows, holds rows packed at the old length, which could not be re-packed
without skipping or repeating them) and for data.packing=lanes (a run at one length fed
as a context-growth run is, e.g. its from-scratch baseline). Lanes mix documents within
a batch instead (each lane reads a different part of the stream).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxlab.config.types import DataConfig
from jaxlab.data import pipeline


class LaneIterator:
  """Endless training batches from `lanes` contiguous streams (see the module docstring);
  `get_state()` is JSON-serialisable and independent of the current length."""

  _FORMAT = 1

  def __init__(self, docs, lanes: int, final_len: int, seq_len: int,
               description: dict[str, Any]):
    self._docs = docs                       # index -> int32 tokens ([BOS] + ...) or None
    self.lanes, self.final_len = lanes, final_len
    self._cursor = [[0, 0] for _ in range(lanes)]     # per lane: (k, offset)
    self._cache: dict[int, tuple[int, np.ndarray | None]] = {}
    self._description = dict(description, packing='lanes', lanes=lanes)
    self.set_seq_len(seq_len)

  def set_seq_len(self, seq_len: int) -> None:
    if seq_len < 1 or self.final_len % seq_len:
      raise ValueError(f'sequence length {seq_len} must divide the final length '
                       f'{self.final_len} (data.seq_len)')
    self.seq_len = seq_len

  def _doc(self, lane: int, k: int) -> np.ndarray | None:
    cached = self._cache.get(lane)
    if cached is None or cached[0] != k:
      cached = (k, self._docs[lane + k * self.lanes])
      self._cache[lane] = cached
    return cached[1]

  def _row(self, lane: int) -> tuple[np.ndarray, np.ndarray]:
    """The lane's next seq_len + 1 tokens and their segment ids."""
    need = self.seq_len + 1
    tokens, segments = [], []
    k, offset = self._cursor[lane]
    while need:
      doc = self._doc(lane, k)
      left = 0 if doc is None else len(doc) - offset
      if left <= 0:                  # an empty document, or this one is used up
        k, offset = k + 1, 0
        continue
      take = min(need, left)
      tokens.append(doc[offset:offset + take])
      segments.append(np.full(take, len(segments) + 1, np.int32))
      offset += take
      need -= take
    self._cursor[lane] = [k, offset]
    return np.concatenate(tokens), np.concatenate(segments)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    per_lane = self.final_len // self.seq_len
    rows = [self._row(b) for b in range(self.lanes) for _ in range(per_lane)]
    return {'tokens': np.stack([r[0] for r in rows]).astype(np.int32),
            'segment_ids': np.stack([r[1] for r in rows]).astype(np.int32)}

  def realised(self) -> None:
    """Lanes do not count a mixture's documents (the rows pipeline does)."""
    return None

  def get_state(self) -> dict[str, Any]:
    return {'format': self._FORMAT, 'pipeline': dict(self._description),
            'lanes': [list(c) for c in self._cursor]}

  def set_state(self, state: dict[str, Any]) -> None:
    if not isinstance(state, dict) or state.get('format') != self._FORMAT or 'lanes' not in state:
      raise ValueError(f'not a jaxlab lane iterator state (format {self._FORMAT})')
    if state['pipeline'] != self._description:
      raise ValueError('the data iterator state was saved by a different pipeline: saved '
                       f'{state["pipeline"]}, this one is {self._description}')
    self._cursor = [[int(k), int(o)] for k, o in state['lanes']]
    self._cache.clear()


def uses_lanes(cfg) -> bool:
  """Whether a run (a Config) reads its training batches from lanes."""
  return bool(cfg.growth.seq_lens) or cfg.data.packing == 'lanes'


def make_lane_iterator(cfg: DataConfig, tokenizer, lanes: int, seq_len: int,
                       process_index: int = 0, process_count: int = 1) -> LaneIterator:
  """Training batches for context growth: `lanes` rows at data.seq_len, or lanes x
  data.seq_len / L rows at length L (set_seq_len), from this process's documents."""
  if lanes < 1:
    raise ValueError(f'batch_size={lanes} must be >= 1 (train.batch_size)')
  docs = pipeline.train_documents(cfg, tokenizer, process_index, process_count)
  encode = pipeline.encoder(tokenizer)
  docs = docs.map(lambda text: encode(text)['tokens'] if len(text) else None)
  description = pipeline.describe(cfg, tokenizer, lanes, process_index, process_count)
  return LaneIterator(docs, lanes, cfg.seq_len, seq_len, description)
