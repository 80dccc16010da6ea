"""Prepared datasets as a run reads them (data.source=prepared): data.path=DIR, or
data.mixture=DIR:WEIGHT,... -- their manifests, the tokenizer they share, their identity,
and how a mixture draws its documents and counts what training consumed.

Tokenizer: the dataset decides. A run takes its manifest's tokenizer (ids, BOS, its
fingerprint: jaxlab.data.tokenizers.DatasetTokenizer); data.tokenizer left at its default
becomes the manifest's spec, and any other data.tokenizer must load as the same tokenizer
(equal fingerprints), else the run is refused naming both. A mixture's datasets must share
one tokenizer fingerprint.

Mixture: the weights are normalised to sum to 1. Each dataset's training documents (this
process's shard) are shuffled by a seed of their own (data.seed and the dataset's index in
data.mixture), repeated, and interleaved by grain.MapDataset.mix in proportion to the
weights: a fixed pattern, so any n consecutive documents hold each dataset's weight x n
within a document or two, the same for a seed on every run. Every document carries its
dataset's index through packing (the per-token features 'source' = index + 1 and 'starts'
= 1 on a document's first token); the DataIterator counts and drops them before a batch
leaves it, and keeps the counts in its state, so they resume exactly. Each evaluation logs
them (jaxlab.train.hooks): mix/<k>/documents, mix/<k>/tokens and their shares.

Validation of a mixture: each dataset's own validation split is evaluated alone
(val_loss/<k>), and val_loss is their mean weighted by the mixture weights: the loss on
the distribution the run trains on.
"""
from __future__ import annotations

import dataclasses
import functools

import grain
import numpy as np

from jaxlab.config.types import ConfigError, DataConfig, mixture_entries
from jaxlab.data import prepared, tokenizers


def datasets(cfg: DataConfig) -> list[tuple[str, float]]:
  """[(directory, weight)]: data.path with weight 1, or data.mixture's, normalised."""
  return [(cfg.path, 1.0)] if cfg.path else mixture_entries(cfg.mixture)


def config_key(cfg: DataConfig) -> str:
  """The key that names the datasets: data.path or data.mixture."""
  return 'data.path' if cfg.path else 'data.mixture'


def manifests(cfg: DataConfig) -> list[dict]:
  """Each dataset's manifest; ConfigError naming the key and the path when one is not a
  prepared dataset."""
  try:
    return [prepared.read_manifest(path, config_key(cfg)) for path, _ in datasets(cfg)]
  except ValueError as err:
    raise ConfigError(str(err)) from None


def resolve(cfg: DataConfig) -> DataConfig:
  """cfg with data.tokenizer set to the datasets' tokenizer (see the module docstring);
  ConfigError when the datasets disagree or data.tokenizer names another tokenizer."""
  found = manifests(cfg)
  paths = [p for p, _ in datasets(cfg)]
  first = found[0]['tokenizer']
  for path, manifest in zip(paths[1:], found[1:]):
    other = manifest['tokenizer']
    if other['fingerprint'] != first['fingerprint']:
      raise ConfigError(
          f'data.mixture: {paths[0]} was prepared with tokenizer {first["spec"]!r} '
          f'({first["fingerprint"]}) and {path} with {other["spec"]!r} ({other["fingerprint"]}); '
          'a mixture needs one tokenizer: prepare them with the same --tokenizer')
  if cfg.tokenizer in (DataConfig.tokenizer, first['spec']):
    return dataclasses.replace(cfg, tokenizer=first['spec'])
  try:
    mine = tokenizers.make_tokenizer(dataclasses.replace(cfg, source='embedded')).fingerprint
  except ValueError as err:
    raise ConfigError(str(err)) from None
  if mine != first['fingerprint']:
    raise ConfigError(
        f'data.tokenizer={cfg.tokenizer!r} ({mine}) is not the tokenizer {paths[0]} was '
        f'prepared with ({first["spec"]!r}, {first["fingerprint"]}); drop data.tokenizer '
        '(the dataset\'s is used) or prepare the data again with --tokenizer '
        f'{cfg.tokenizer}')
  return cfg


def identity(cfg: DataConfig) -> list[dict]:
  """Each dataset's identity: where it was, its manifest's SHA-256 (the shards' documents
  and token counts, the sources' hashes, the tokenizer) and tokenizer fingerprint."""
  return [{'path': path, 'weight': weight, 'manifest_sha256': prepared.manifest_sha256(path),
           'tokenizer': manifest['tokenizer']['fingerprint']}
          for (path, weight), manifest in zip(datasets(cfg), manifests(cfg))]


def parts(cfg: DataConfig) -> list[tuple[DataConfig, float]]:
  """A mixture as one data.path config per dataset, with its weight."""
  return [(dataclasses.replace(cfg, path=path, mixture=()), weight)
          for path, weight in datasets(cfg)]


# ----------------------------------------------------------------------------- drawing

def _tag(k: int, ids):
  return k, ids


def mix(streams: list[grain.MapDataset], weights: list[float],
        tagged: bool) -> grain.MapDataset:
  """Endless per-dataset streams interleaved by weight; tagged: items are (index, ids)."""
  if tagged:
    streams = [s.map(functools.partial(_tag, k)) for k, s in enumerate(streams)]
  return grain.MapDataset.mix(streams, weights)


def features(example: dict, k: int) -> dict:
  """An encoded document's packing features: which dataset each token came from, and
  where the document starts."""
  n = len(example['tokens'])
  starts = np.zeros(n, np.int32)
  starts[0] = 1
  return dict(example, source=np.full(n, k + 1, np.int32), starts=starts)


FEATURES = ('source', 'starts')


class Counts:
  """Documents and tokens per dataset in the batches handed to training."""

  def __init__(self, n: int):
    self.documents, self.tokens = [0] * n, [0] * n

  def add(self, source: np.ndarray, starts: np.ndarray) -> None:
    for k in range(len(self.tokens)):
      mine = source == k + 1
      self.tokens[k] += int(mine.sum())
      self.documents[k] += int((mine & (starts == 1)).sum())

  def state(self) -> dict:
    return {'documents': list(self.documents), 'tokens': list(self.tokens)}

  def set_state(self, state: dict) -> None:
    self.documents = [int(v) for v in state['documents']]
    self.tokens = [int(v) for v in state['tokens']]
