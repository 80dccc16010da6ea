"""Documents' text from .txt, .jsonl / .jsonl.gz and .parquet files, and the one-line
errors naming the file and the line (1-based) or row (0-based): the rules that
data.source=files (jaxlab.data.files) and `launch.py prepare` (jaxlab.data.prepare) share.

  .txt                one document per file (UTF-8)
  .jsonl, .jsonl.gz   one document per line: the line's text field (a JSON object's
                      string value); blank lines are skipped
  .parquet            one document per row: the text column (strings, no nulls)

Every function takes the words its messages use: `prefix`, what a message starts with
('data.files', 'prepare'), and `key`, the option that names the text field
('data.text_field', '--text-field').
"""
from __future__ import annotations

import json
from typing import Iterator

FORMATS = ('.txt', '.jsonl', '.jsonl.gz', '.parquet')


def file_format(path: str, prefix: str = 'data.files') -> str:
  for ext in sorted(FORMATS, key=len, reverse=True):
    if path.endswith(ext):
      return ext
  raise ValueError(f'{prefix}: {path!r} has an unknown extension; allowed: '
                   f'{", ".join(FORMATS)}')


def _not_utf8(data: bytes, err: UnicodeDecodeError) -> str:
  return f'not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start})'


def txt_text(data: bytes, path: str, prefix: str) -> str:
  """A .txt file's bytes as its document."""
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as err:
    line = data.count(b'\n', 0, err.start) + 1
    raise ValueError(f'{prefix}: {path} line {line}: {_not_utf8(data, err)}') from None


def line_text(line: bytes | str, field: str, path: str, n: int, prefix: str,
              key: str) -> str | None:
  """The document of jsonl line `n` (1-based) of `path`; None for a blank line."""
  if isinstance(line, bytes):
    try:
      line = line.decode('utf-8')
    except UnicodeDecodeError as err:
      raise ValueError(f'{prefix}: {path} line {n}: {_not_utf8(line, err)}') from None
  if not line.strip():
    return None
  try:
    record = json.loads(line)
  except json.JSONDecodeError as err:
    raise ValueError(f'{prefix}: {path} line {n}: not valid JSON ({err})') from None
  if not isinstance(record, dict):
    raise ValueError(f'{prefix}: {path} line {n}: no field {field!r} ({key}; the line is a '
                     f'JSON {type(record).__name__}, not an object)')
  if field not in record:
    raise ValueError(f'{prefix}: {path} line {n}: no field {field!r} ({key}; the line has: '
                     f'{", ".join(record)})')
  text = record[field]
  if not isinstance(text, str):
    raise ValueError(f'{prefix}: {path} line {n}: field {field!r} is '
                     f'{type(text).__name__}, not a string')
  return text


def jsonl_texts(file, path: str, field: str, prefix: str, key: str) -> Iterator[str]:
  """The documents of an open binary jsonl file (decompressed already), in order."""
  for n, line in enumerate(file, start=1):
    text = line_text(line, field, path, n, prefix, key)
    if text is not None:
      yield text


def parquet_batches(source, path: str, field: str, prefix: str, key: str,
                    rows: int) -> Iterator[tuple[int, list[str]]]:
  """(first row, texts) of a parquet file (`source`: its path or an open binary file), up
  to `rows` rows at a time, in order."""
  import pyarrow as pa   # only for parquet files
  import pyarrow.parquet as pq
  try:
    pf = pq.ParquetFile(source)
  except (OSError, pa.ArrowException) as err:
    raise ValueError(f'{prefix}: cannot read {path} as parquet ({err})') from None
  names = pf.schema_arrow.names
  if field not in names:
    raise ValueError(f'{prefix}: {path}: no column {field!r} ({key}; columns: '
                     f'{", ".join(names)})')
  kind = pf.schema_arrow.field(field).type
  if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
    raise ValueError(f'{prefix}: {path}: column {field!r} holds {kind}, not strings')
  row = 0
  try:
    for batch in pf.iter_batches(columns=[field], batch_size=rows):
      texts = batch.column(0).to_pylist()
      if None in texts:
        raise ValueError(f'{prefix}: {path} row {row + texts.index(None)}: {field!r} is null')
      yield row, texts
      row += len(texts)
  except (OSError, pa.ArrowException) as err:
    raise ValueError(f'{prefix}: cannot read {path} as parquet after row {row} ({err})') from None


def parquet_texts(path: str, field: str, prefix: str, key: str,
                  rows: int = 1024) -> Iterator[str]:
  for _, texts in parquet_batches(path, path, field, prefix, key, rows):
    yield from texts
