"""Tokenizers: raw UTF-8 bytes, a trained SentencePiece model, or a Hugging Face
tokenizer.json (the `tokenizers` library).

Each exposes ``vocab_size``, ``bos_id`` (the id the pipeline puts before every document),
``encode(text) -> int32 array`` (no special tokens; the pipeline adds BOS),
``encode_batch(texts)`` (parallel where the library is: SentencePiece and tokenizers run
threads outside the GIL), ``decode(ids) -> str``, and ``fingerprint`` (what the token
cache keys on: equal fingerprints encode equally).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Iterable

import numpy as np
import sentencepiece as spm

from jaxlab.config.types import DataConfig, mixture_entries
from jaxlab.data import prepared


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

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  fingerprint = 'byte'

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

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    ids = self._sp.encode(list(texts), num_threads=os.cpu_count() or 1)
    return [np.asarray(x, dtype=np.int32) for x in ids]

  @property
  def fingerprint(self) -> str:
    return 'spm:' + _digest(pathlib.Path(self.path).read_bytes())

  def __repr__(self) -> str:
    return f'SentencePieceTokenizer({self.path!r})'


def _digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()[:16]


def _token_text(value) -> str | None:
  """A special token as tokenizer_config.json writes it: a string, or {'content': ...}."""
  if isinstance(value, dict):
    value = value.get('content')
  return value if isinstance(value, str) else None


class HFTokenizer:
  """A Hugging Face tokenizer.json, read with the `tokenizers` library. BOS and EOS come
  from the files beside it: tokenizer_config.json's bos_token / eos_token (or
  special_tokens_map.json's), else config.json's / generation_config.json's
  bos_token_id / eos_token_id. A tokenizer without BOS (GPT-2, Qwen) separates documents
  with its EOS instead: bos_id is the EOS id then. vocab_size counts the added tokens."""

  def __init__(self, path: str | os.PathLike):
    import tokenizers   # only for Hugging Face tokenizers
    path = pathlib.Path(path).expanduser()
    self.path = path / 'tokenizer.json' if path.is_dir() else path
    self.dir = self.path.parent
    self._data = self.path.read_bytes()
    self._tok = tokenizers.Tokenizer.from_str(self._data.decode('utf-8'))
    self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
    bos, eos = self._special('bos'), self._special('eos')
    if bos is None and eos is None:
      raise ValueError(f'data.tokenizer={str(path)!r}: no BOS or EOS token found (tokenizer_config'
                       '.json bos_token / eos_token, or config.json bos_token_id / eos_token_id); '
                       'the pipeline needs one to mark where documents start')
    self.eos_id = eos
    self.bos_id = bos if bos is not None else eos

  def _json(self, name: str) -> dict:
    try:
      return json.loads((self.dir / name).read_text())
    except (OSError, json.JSONDecodeError):
      return {}

  def _special(self, kind: str) -> int | None:
    for name in ('tokenizer_config.json', 'special_tokens_map.json'):
      text = _token_text(self._json(name).get(f'{kind}_token'))
      if text is not None:
        token_id = self._tok.token_to_id(text)
        if token_id is None:
          raise ValueError(f'data.tokenizer={str(self.path)!r}: {name} names {kind}_token '
                           f'{text!r}, which tokenizer.json does not have')
        return int(token_id)
    for name in ('config.json', 'generation_config.json'):
      value = self._json(name).get(f'{kind}_token_id')
      if isinstance(value, list):
        value = value[0] if value else None
      if isinstance(value, int):
        return value
    return None

  def encode(self, text: str | bytes) -> np.ndarray:
    if isinstance(text, bytes):
      text = text.decode('utf-8')
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    out = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int32) for e in out]

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                            skip_special_tokens=False)

  @property
  def fingerprint(self) -> str:
    return f'hf:{_digest(self._data)}:{self.bos_id}'

  def __repr__(self) -> str:
    return f'HFTokenizer({str(self.path)!r})'


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


class DatasetTokenizer:
  """The tokenizer a prepared dataset was made with, as its manifest records it: its ids
  (vocab_size, bos_id, eos_id) and fingerprint, which is all training on token ids needs;
  the tokenizer's own files need not be on the machine that trains."""

  def __init__(self, entry: dict):
    self.spec, self.fingerprint = entry['spec'], entry['fingerprint']
    self.vocab_size, self.bos_id = int(entry['vocab_size']), int(entry['bos_id'])
    self.eos_id = entry.get('eos_id')

  def encode(self, text):
    raise ValueError(f'data.source=prepared trains on token ids; to encode text load the '
                     f'tokenizer itself (data.tokenizer={self.spec!r})')

  encode_batch = decode = encode

  def __repr__(self) -> str:
    return f'DatasetTokenizer({self.spec!r})'


def make_tokenizer(cfg: DataConfig):
  """`data.tokenizer`: 'byte', a Hugging Face tokenizer.json (or a directory holding one),
  or the path of a trained SentencePiece .model file; data.source=prepared: the dataset's
  (its manifest's, DatasetTokenizer; jaxlab.data.mixture checks that they agree)."""
  if cfg.source == 'prepared':
    path, key = (cfg.path, 'data.path') if cfg.path else (
        mixture_entries(cfg.mixture)[0][0], 'data.mixture')
    return DatasetTokenizer(prepared.read_manifest(path, key)['tokenizer'])
  if cfg.tokenizer == 'byte':
    return ByteTokenizer()
  path = os.path.expanduser(cfg.tokenizer)
  if os.path.isdir(path) or path.endswith('.json'):
    file = os.path.join(path, 'tokenizer.json') if os.path.isdir(path) else path
    if not os.path.isfile(file):
      raise ValueError(f'data.tokenizer={cfg.tokenizer!r}: no {file} (a Hugging Face tokenizer '
                       'is a tokenizer.json, or a model directory holding one)')
    try:
      return HFTokenizer(path)
    except Exception as e:  # pylint: disable=broad-except -- tokenizers raises its own types
      if isinstance(e, ValueError) and str(e).startswith('data.tokenizer'):
        raise
      raise ValueError(f'data.tokenizer={cfg.tokenizer!r}: {file} is not a readable Hugging Face '
                       f'tokenizer ({type(e).__name__}: {e})') from e
  if not os.path.isfile(path):
    raise ValueError(
        f'data.tokenizer={cfg.tokenizer!r}: no such file. Use data.tokenizer=byte, a Hugging '
        'Face tokenizer.json (or a directory holding one), or the path of a SentencePiece '
        '.model file (jaxlab.data.train_sentencepiece trains one)')
  try:
    return SentencePieceTokenizer(path)
  except (RuntimeError, OSError) as e:
    raise ValueError(f'data.tokenizer={cfg.tokenizer!r} is not a readable SentencePiece '
                     f'model: {e}') from e
