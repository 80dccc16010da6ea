"""The grain input pipeline: documents -> [BOS] + tokens -> packed rows -> batches.

    documents (embedded corpus | any TFDS text dataset | local files: .txt, .jsonl(.gz),
               .parquet, tokenised once and cached by jaxlab.data.files | a prepared
               dataset's token ids, data.path, or a mixture of them, data.mixture:
               jaxlab.data.mixture)
      -> this process's shard (documents process_index, process_index + process_count, ...)
      -> shuffle (training: by data.seed, a new order every epoch; repeated forever)
      -> [BOS] + tokenizer.encode(text)
      -> concatenate, then split into rows of seq_len + 1 tokens (grain ConcatThenSplit)
      -> training: shuffle rows within windows of data.shuffle_rows, so that a batch
         mixes many documents instead of one document's consecutive rows
      -> batches {'tokens': int32[B, seq_len + 1], 'segment_ids': int32[B, seq_len + 1]}

Rows hold seq_len + 1 tokens because the train step shifts them itself (inputs =
tokens[:, :-1], targets = tokens[:, 1:]). ``segment_ids`` number the document pieces
inside a row 1, 2, ...; a new piece starts where the id changes, and every document
starts with BOS (a piece that continues a document from the previous row does not).
Id 0 marks padding (token 0); only the end of a finite (validation) stream is padded.

Sharding is by document, so processes never share a document, and validation
documents never appear in training (embedded: split by a hash of the document id;
tfds: separate splits; files: the last data.val_fraction of every file; prepared: the
dataset's own splits, by a hash of each document).
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import json
from typing import Any, Iterator

import grain
import numpy as np
import tensorflow_datasets as tfds

from jaxlab.config.types import DataConfig
from jaxlab.data import corpus, files, mixture, prepared

Batch = dict[str, np.ndarray]

# Validation is read in one fixed shuffled order, independent of data.seed, so that
# every run (and every call) evaluates on the same documents.
_EVAL_SHUFFLE_SEED = 0
# Documents are read and tokenized in the calling thread: faster here than grain's
# read-ahead threads (which contend for the GIL with packing), and JAX's asynchronous
# dispatch already overlaps making the next batch with the running train step.
_READ_OPTIONS = grain.ReadOptions(num_threads=0)


def _stable_seed(seed: int, purpose: str) -> int:
  """A 32-bit seed from (seed, purpose), unsalted; seeds 0 and 1 share no epoch order."""
  digest = hashlib.sha256(f'jaxlab/{purpose}/{seed}'.encode()).digest()
  return int.from_bytes(digest[:4], 'little')


# ----------------------------------------------------------------------------- sources

def _tfds_texts(name: str, split: str, split_key: str, text_key: str, data_dir: str):
  """The `text_key` (data.text_field) field of TFDS dataset `name`, `split`, as a grain
  MapDataset."""
  try:
    builder = corpus.prepared_builder(name, data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    known = sorted(set(tfds.list_builders(with_community_datasets=False)))
    close = difflib.get_close_matches(name.split('/')[0], known, n=3)
    hint = f'; did you mean {", ".join(close)}?' if close else ' (see tfds.list_builders())'
    raise ValueError(f'data.tfds_name={name!r} is not a known TFDS dataset{hint}') from e
  except Exception as e:  # pylint: disable=broad-except -- TFDS raises many kinds here
    raise RuntimeError(
        f'data.tfds_name={name!r} is not prepared in {data_dir} and could not be prepared '
        f'here ({type(e).__name__}: {e}). On a machine with network access run '
        f"tfds.builder({name!r}, data_dir=DIR, file_format='array_record')"
        '.download_and_prepare() and copy DIR here, or point data.data_dir at it.') from e
  try:
    source = builder.as_data_source(split=split)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'{split_key}={split!r} of TFDS dataset {name!r} cannot be read as array_record '
        f'(splits: {", ".join(builder.info.splits.keys())}): {type(e).__name__}: {e}') from e
  if len(source) and text_key not in source[0]:
    raise ValueError(f'data.text_field={text_key!r} is not a field of {name!r}; '
                     f'fields: {", ".join(source[0])}')
  return grain.MapDataset.source(source).map(lambda example: example[text_key])


def _documents(cfg: DataConfig, split: str, tokenizer) -> grain.MapDataset:
  """All documents of `split` ('train' or 'validation') as texts (str or UTF-8 bytes), or
  token ids (data.source=files: tokenised and cached by jaxlab.data.files)."""
  if cfg.source == 'embedded':
    return grain.MapDataset.source(corpus.data_source(split, cfg.data_dir)).map(
        lambda example: example['text'])
  if cfg.source == 'tfds':
    data_dir = corpus.default_data_dir(cfg.data_dir)
    split_name, key = ((cfg.tfds_train_split, 'data.tfds_train_split') if split == 'train'
                       else (cfg.tfds_val_split, 'data.tfds_val_split'))
    return _tfds_texts(cfg.tfds_name, split_name, key, cfg.text_field, data_dir)
  if cfg.source == 'files':
    return grain.MapDataset.source(files.documents(cfg, split, tokenizer))
  if cfg.source == 'prepared':   # one dataset (a mixture's are read one by one)
    return grain.MapDataset.source(prepared.SplitDocuments(cfg.path, split))
  raise ValueError(f"data.source={cfg.source!r}: expected 'embedded', 'tfds', 'files' or "
                   "'prepared'")


def _shard(docs: grain.MapDataset, process_index: int, process_count: int,
           split: str) -> grain.MapDataset:
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, {process_count})')
  shard = docs[process_index::process_count]
  if len(shard) == 0:
    raise ValueError(f'the {split} split has {len(docs)} documents, fewer than the '
                     f'{process_count} processes that each need one (data.source)')
  return shard


# ----------------------------------------------------------------------------- packing

def encoder(tokenizer):
  """text (or token ids) -> {'tokens': [BOS] + ids} as int32."""
  bos = np.array([tokenizer.bos_id], dtype=np.int32)

  def encode(text) -> dict[str, np.ndarray]:
    if isinstance(text, np.ndarray):   # already token ids
      return {'tokens': np.concatenate([bos, text.astype(np.int32)])}
    if isinstance(text, bytes):
      text = text.decode('utf-8')
    return {'tokens': np.concatenate([bos, np.asarray(tokenizer.encode(text), np.int32)])}
  return encode


def _rows(docs: grain.MapDataset, tokenizer, seq_len: int,
          tagged: bool = False) -> grain.IterDataset:
  """Documents -> rows {'tokens', 'segment_ids'} of seq_len + 1 tokens; tagged (documents
  are (dataset index, ids): a mixture) adds mixture.FEATURES, aligned with the tokens."""
  encode = encoder(tokenizer)
  if tagged:
    encoded = docs.filter(lambda doc: len(doc[1]) > 0).map(
        lambda doc: mixture.features(encode(doc[1]), doc[0]))
  else:
    encoded = docs.filter(lambda text: len(text) > 0).map(encode)
  extra = mixture.FEATURES if tagged else ()
  packed = grain.experimental.ConcatThenSplitIterDataset(
      encoded.to_iter_dataset(_READ_OPTIONS),
      length_struct={k: seq_len + 1 for k in ('tokens', *extra)})
  return packed.map(lambda row: {'tokens': row['tokens'], 'segment_ids': row['tokens_segment_ids'],
                                 **{k: row[k] for k in extra}})


# ----------------------------------------------------------------------------- public API

def _to_json(state):
  if isinstance(state, dict):
    return {k: _to_json(v) for k, v in state.items()}
  if isinstance(state, (list, tuple)):
    return [_to_json(v) for v in state]
  if isinstance(state, np.generic):
    return state.item()
  return state


def _from_json(state):
  # grain's iterator states hold tuples (ConcatThenSplit compares its slices with a
  # tuple sentinel) and never lists, so every JSON list was a tuple.
  if isinstance(state, dict):
    return {k: _from_json(v) for k, v in state.items()}
  if isinstance(state, list):
    return tuple(_from_json(v) for v in state)
  return state


class DataIterator:
  """Endless training batches; `get_state()` is JSON-serialisable, `set_state` resumes
  exactly (the next batch is the one the saved iterator would have produced). With
  `counts` (a mixture), the batches' mixture features are counted and dropped: a batch
  holds only 'tokens' and 'segment_ids'."""

  _FORMAT = 1

  def __init__(self, dataset: grain.IterDataset, description: dict[str, Any],
               counts: mixture.Counts | None = None):
    self._iterator = iter(dataset)
    self._description = description
    self._counts = counts

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    batch = next(self._iterator)
    if self._counts is not None:
      self._counts.add(*(batch.pop(k) for k in mixture.FEATURES))
    return batch

  def realised(self) -> dict[str, list[int]] | None:
    """A mixture's documents and tokens per dataset trained on so far (this process's
    batches), else None."""
    return None if self._counts is None else self._counts.state()

  def get_state(self) -> dict[str, Any]:
    state = {'format': self._FORMAT, 'pipeline': dict(self._description),
             'grain': _to_json(self._iterator.get_state())}
    if self._counts is not None:
      state['mixture'] = self._counts.state()
    return state

  def set_state(self, state: dict[str, Any]) -> None:
    if not isinstance(state, dict) or state.get('format') != self._FORMAT:
      raise ValueError(f'not a jaxlab data iterator state (format {self._FORMAT}): '
                       f'{json.dumps(state)[:200]}')
    if state['pipeline'] != self._description:
      raise ValueError('the data iterator state was saved by a different pipeline: saved '
                       f'{state["pipeline"]}, this one is {self._description}')
    self._iterator.set_state(_from_json(state['grain']))
    if self._counts is not None:
      self._counts.set_state(state['mixture'])


def describe(cfg: DataConfig, tokenizer, batch_size: int, process_index: int,
              process_count: int) -> dict[str, Any]:
  # What the saved position means; paths are left out so a run can resume elsewhere (what
  # the data is, is data.json's: jaxlab.data.identity).
  out = {'source': cfg.source, 'tfds_name': cfg.tfds_name, 'n_files': len(cfg.files),
         'vocab_size': int(tokenizer.vocab_size),
         'seq_len': cfg.seq_len, 'seed': cfg.seed, 'shuffle_rows': cfg.shuffle_rows,
         'batch_size': batch_size,
         'process_index': process_index, 'process_count': process_count}
  if cfg.mixture:
    out['mixture_weights'] = [w for _, w in mixture.datasets(cfg)]
  return out


def train_documents(cfg: DataConfig, tokenizer, process_index: int = 0,
                    process_count: int = 1, tagged: bool = False):
  """This process's training documents in data.seed's order, reshuffled every epoch and
  repeated forever (a grain MapDataset: random access by position in the stream). A
  mixture: each dataset's so, by a seed of its own, interleaved by weight (tagged: as
  (dataset index, ids); jaxlab.data.mixture)."""
  if cfg.mixture:
    parts = mixture.parts(cfg)
    streams = [_train_stream(part, tokenizer, process_index, process_count, f'train/{k}')
               for k, (part, _) in enumerate(parts)]
    return mixture.mix(streams, [w for _, w in parts], tagged)
  return _train_stream(cfg, tokenizer, process_index, process_count, 'train')


def _train_stream(cfg: DataConfig, tokenizer, process_index: int, process_count: int,
                  purpose: str):
  docs = _shard(_documents(cfg, 'train', tokenizer), process_index, process_count, 'train')
  return docs.shuffle(seed=_stable_seed(cfg.seed, purpose)).repeat()


def make_train_iterator(cfg: DataConfig, tokenizer, batch_size: int, process_index: int = 0,
                        process_count: int = 1) -> DataIterator:
  """Endless packed training batches of `batch_size` rows for this process.

  Each process reads its own documents; all share one shuffle seed (data.seed), and
  the document order changes every epoch.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be >= 1 (train.batch_size)')
  tagged = bool(cfg.mixture)
  docs = train_documents(cfg, tokenizer, process_index, process_count, tagged)
  rows = _rows(docs, tokenizer, cfg.seq_len, tagged)
  if cfg.shuffle_rows > 1:
    rows = grain.experimental.WindowShuffleIterDataset(
        rows, window_size=cfg.shuffle_rows, seed=_stable_seed(cfg.seed, 'rows'))
  batches = rows.batch(batch_size, drop_remainder=True)
  counts = mixture.Counts(len(cfg.mixture)) if tagged else None
  return DataIterator(batches, describe(cfg, tokenizer, batch_size, process_index, process_count),
                      counts)


def eval_batches(cfg: DataConfig, tokenizer, batch_size: int, n_batches: int | str,
                 process_index: int = 0, process_count: int = 1) -> list[Batch]:
  """Validation batches of `batch_size` rows for this process, the same on every call
  and for every data.seed.

  n_batches = N: the first N packed batches of this process's validation documents;
  raises ValueError if they cannot fill N batches. n_batches = 'all' (train.eval_batches
  =all): every token of the split. All processes then pack the whole split in one fixed
  order -- the same rows whatever the process count -- and each takes its share of
  every global batch of batch_size x process_count rows; the last global batch is
  filled up with padding rows (segment id 0, which the loss skips), so every process
  gets the same number of batches and the evaluated tokens are exactly the split's.
  """
  if n_batches == 'all':
    return _whole_split(cfg, tokenizer, batch_size, process_index, process_count)
  docs = _shard(_documents(cfg, 'validation', tokenizer), process_index, process_count,
                'validation')
  batches = _eval_rows(docs, tokenizer, cfg.seq_len).batch(batch_size, drop_remainder=True)
  out = list(itertools.islice(iter(batches), n_batches))
  if len(out) < n_batches:
    raise ValueError(
        f'the validation split has only {len(out)} batches of {batch_size} rows x '
        f'{cfg.seq_len + 1} tokens for this process, but train.eval_batches={n_batches} '
        f'were asked for; lower train.eval_batches (or train.batch_size / data.seq_len), '
        'or set train.eval_batches=all')
  return out


def eval_sets(cfg: DataConfig, tokenizer, batch_size: int, n_batches: int | str,
              process_index: int = 0, process_count: int = 1
              ) -> list[tuple[str, float, list[Batch]]]:
  """[(name, weight, eval_batches)]: one set named '' of weight 1, or for a mixture one
  per dataset, named by its index, with its weight (val_loss is the weighted mean)."""
  if not cfg.mixture:
    return [('', 1.0, eval_batches(cfg, tokenizer, batch_size, n_batches, process_index,
                                   process_count))]
  return [(str(k), weight, eval_batches(part, tokenizer, batch_size, n_batches,
                                        process_index, process_count))
          for k, (part, weight) in enumerate(mixture.parts(cfg))]


# An evaluation batch costs about this fraction of a train step on the same batch (a
# forward pass only): 0.14-0.21 measured on a CPU at d 96-128, seq 128, batch 16
# (bench/bench_eval_cost.py).
EVAL_BATCH_COST = 0.2


def eval_cost_note(n_batches: int, eval_every: int, steps: int) -> str | None:
  """A one-line note when train.eval_batches=all evaluates n_batches at every evaluation
  for more than about 10% of the run's time (EVAL_BATCH_COST), else None."""
  n_evals = steps // eval_every + (steps % eval_every > 0) if eval_every else 1   # + the last
  share = EVAL_BATCH_COST * n_batches * n_evals / max(steps, 1)
  if share <= 0.1:
    return None
  return (f'note: train.eval_batches=all evaluates {n_batches} batches at each of {n_evals} '
          f'evaluations, about {100 * share:.0f}% of this run\'s time; set '
          'train.eval_batches=N or raise train.eval_every to spend less')


def _eval_rows(docs: grain.MapDataset, tokenizer, seq_len: int) -> grain.IterDataset:
  """Validation rows in the one fixed order (independent of data.seed)."""
  return _rows(docs.shuffle(seed=_stable_seed(_EVAL_SHUFFLE_SEED, 'eval')), tokenizer, seq_len)


def _whole_split(cfg: DataConfig, tokenizer, batch_size: int, process_index: int,
                 process_count: int) -> list[Batch]:
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, {process_count})')
  rows = list(_eval_rows(_documents(cfg, 'validation', tokenizer), tokenizer, cfg.seq_len))
  if not rows:
    raise ValueError('the validation split is empty (data.source): train.eval_batches=all '
                     'has nothing to evaluate; set train.eval_batches=0')
  tokens = np.stack([r['tokens'] for r in rows]).astype(np.int32)
  segments = np.stack([r['segment_ids'] for r in rows]).astype(np.int32)
  global_batch = batch_size * process_count
  pad = -len(rows) % global_batch
  tokens = np.pad(tokens, ((0, pad), (0, 0)))
  segments = np.pad(segments, ((0, pad), (0, 0)))
  out = []
  for start in range(0, len(tokens), global_batch):
    mine = slice(start + process_index * batch_size, start + (process_index + 1) * batch_size)
    out.append({'tokens': tokens[mine], 'segment_ids': segments[mine]})
  return out

