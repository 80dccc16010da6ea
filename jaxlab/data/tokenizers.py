"""Tokenizers: raw UTF-8 bytes, or a trained SentencePiece model.

Both expose ``vocab_size``, ``bos_id``, ``encode(text) -> int32 array`` (no BOS; the
pipeline adds it) and ``decode(ids) -> str``.
"""
from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import sentencepiece as spm

from jaxlab.config_types import DataConfig


class ByteTokenizer:
  """ids 0..255 are the UTF-8 bytes of the text; 256 is BOS."""

  vocab_size = 257
  bos_id = 256

  def encode(self, text: str | bytes) -> np.ndarray:
    data = text.encode('utf-8') if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    ids = np.asarray(ids).reshape(-1)
    data = ids[(ids >= 0) & (ids < 256)].astype(np.uint8).tobytes()   # drops BOS
    return data.decode('utf-8', errors='replace')

  def __repr__(self) -> str:
    return 'ByteTokenizer()'


class SentencePieceTokenizer:
  """A trained SentencePiece model (``.model`` file); BOS is the model's bos id."""

  def __init__(self, path: str):
    self.path = os.fspath(path)
    self._sp = spm.SentencePieceProcessor(model_file=self.path)
    self.vocab_size = int(self._sp.vocab_size())
    self.bos_id = int(self._sp.bos_id())
    if self.bos_id < 0:
      raise ValueError(f'SentencePiece model {self.path!r} has no BOS piece (bos_id=-1); '
                       'train it with bos_id >= 0, e.g. with jaxlab.data.train_sentencepiece')

  def encode(self, text: str | bytes) -> np.ndarray:
    if isinstance(text, bytes):
      text = text.decode('utf-8')
    return np.asarray(self._sp.encode(text), dtype=np.int32)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])

  def __repr__(self) -> str:
    return f'SentencePieceTokenizer({self.path!r})'


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int,
                        **options) -> SentencePieceTokenizer:
  """Trains a lossless BPE SentencePiece model on `texts`; writes `model_prefix`.model/.vocab.

  Lossless: no normalization, whitespace kept as is, unknown characters fall back to
  bytes (so vocab_size must be > 260: 256 byte pieces, unk/bos/eos, newline), and
  decode(encode(text)) == text. `options` override any SentencePieceTrainer flag.
  """
  flags = dict(
      model_prefix=os.fspath(model_prefix), vocab_size=int(vocab_size), model_type='bpe',
      normalization_rule_name='identity', remove_extra_whitespaces=False,
      add_dummy_prefix=False, byte_fallback=True, character_coverage=1.0,
      user_defined_symbols=['\n'], allow_whitespace_only_pieces=True,
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False,
      max_sentence_length=1 << 20, num_threads=os.cpu_count() or 1, minloglevel=2)
  flags.update(options)
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), **flags)
  return SentencePieceTokenizer(f'{model_prefix}.model')


def make_tokenizer(cfg: DataConfig) -> ByteTokenizer | SentencePieceTokenizer:
  """`data.tokenizer`: 'byte', or the path of a trained SentencePiece .model file."""
  if cfg.tokenizer == 'byte':
    return ByteTokenizer()
  path = os.path.expanduser(cfg.tokenizer)
  if not os.path.isfile(path):
    raise ValueError(
        f'data.tokenizer={cfg.tokenizer!r}: no such file. Use data.tokenizer=byte or the path '
        'of a SentencePiece .model file (jaxlab.data.train_sentencepiece trains one)')
  try:
    return SentencePieceTokenizer(path)
  except (RuntimeError, OSError) as e:
    raise ValueError(f'data.tokenizer={cfg.tokenizer!r} is not a readable SentencePiece '
                     f'model: {e}') from e
