"""Prepared datasets for tests, written straight with jaxlab.data.prepared's ShardWriter and a
manifest of the keys its docstring names (the byte tokenizer), without `launch.py prepare`."""
import json
import pathlib

import numpy as np

from jaxlab.data import prepared
from jaxlab.data.tokenizers import ByteTokenizer

WORDS = ('the growth of a model in depth and width over many steps of training with data '
         'from several sources mixed by weight').split()


def texts(n: int, seed: int = 0, words: int = 30, prefix: str = '') -> list[str]:
  rng = np.random.RandomState(seed)
  return [prefix + ' '.join(rng.choice(WORDS, rng.randint(words // 2, words * 2)))
          for _ in range(n)]


def write(out, docs: list[str], val_fraction: float = 0.1, shards: int = 2,
          tokenizer=None) -> pathlib.Path:
  """Writes `docs` (texts) as a prepared dataset in `out` (created); returns its path."""
  out = pathlib.Path(out)
  out.mkdir(parents=True)
  tok = tokenizer or ByteTokenizer()
  dtype = prepared.token_dtype(tok.vocab_size)
  writers = {split: prepared.ShardWriter(out, split, shards, dtype) for split in prepared.SPLITS}
  for text in docs:
    split = 'validation' if prepared.is_validation(text, val_fraction) else 'train'
    writers[split].add(tok.encode(text))
  manifest = {
      'format': prepared.FORMAT, 'version': prepared.VERSION, 'dtype': dtype,
      'tokenizer': {'spec': 'byte', 'fingerprint': tok.fingerprint,
                    'vocab_size': tok.vocab_size, 'bos_id': tok.bos_id, 'eos_id': None},
      'text_field': 'text', 'val_fraction': val_fraction,
      'sources': [{'path': 'test', 'size': 0, 'sha256': '', 'documents': len(docs)}],
      'splits': {split: w.close() for split, w in writers.items()}}
  (out / prepared.MANIFEST).write_text(json.dumps(manifest, indent=1))
  return out
