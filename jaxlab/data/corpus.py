"""The embedded default corpus: English text that ships with Python, as a TFDS dataset.

Built offline on first use from two sources of the running interpreter:
  * the pydoc topics (``pydoc_data.topics.topics``): one document per topic;
  * the standard library's docstrings, read from the ``.py`` sources with ``ast``:
    one document per module -- the module docstring, then each class / function
    docstring under a header with its qualified name.
Documents go to 'train' or 'validation' by a hash of their id (about 5% validation),
so training never sees a validation document. The stdlib text depends on the Python
version, so the builder config is named after it (``py3_11``): different Pythons
never share a cache. Stored as array_record and read with ``tfds.data_source``
(no TensorFlow needed).

The build is shared between processes: ``prepare`` takes a file lock in the data
dir, and TFDS writes into a temporary directory that it renames when complete.
"""
from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import io
import logging
import os
import pathlib
import sys
import sysconfig
import warnings
from typing import Iterator

from etils import epath
import tensorflow_datasets as tfds

NAME = 'jaxlab_corpus'          # the TFDS name of JaxlabCorpus (from the class name)
SPLITS = ('train', 'validation')
VAL_PER_MILLE = 50              # ~5% of documents (by id hash) are validation
MIN_CHARS = 1_000_000
PY_CONFIG = f'py{sys.version_info.major}_{sys.version_info.minor}'

# Directories of the stdlib that hold no useful English prose, or test code.
_SKIP_DIRS = {'test', 'tests', 'idle_test', 'idlelib', 'turtledemo', 'site-packages',
              'dist-packages', 'pydoc_data', 'ensurepip', 'encodings', '__pycache__'}


def default_data_dir(data_dir: str = '') -> str:
  """`data.data_dir`, else $JAXLAB_DATA_DIR, else ~/.cache/jaxlab/tensorflow_datasets."""
  path = (data_dir or os.environ.get('JAXLAB_DATA_DIR')
          or os.path.join('~', '.cache', 'jaxlab', 'tensorflow_datasets'))
  return os.path.abspath(os.path.expanduser(path))


def split_of(doc_id: str) -> str:
  """'train' or 'validation', from a stable (unsalted) hash of the document id."""
  digest = hashlib.sha256(doc_id.encode('utf-8')).digest()
  return 'validation' if int.from_bytes(digest[:8], 'little') % 1000 < VAL_PER_MILLE else 'train'


# ----------------------------------------------------------------------------- documents

def _topic_documents() -> Iterator[tuple[str, str]]:
  try:
    from pydoc_data.topics import topics
  except ImportError:   # some distributions strip pydoc_data
    return
  for name in sorted(topics):
    text = topics[name].strip()
    if text:
      yield f'topic:{name}', text


def _docstring_sections(node, prefix: str) -> Iterator[str]:
  for child in node.body:
    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      qualname = f'{prefix}.{child.name}'
      doc = ast.get_docstring(child, clean=True)
      if doc:
        kind = 'class' if isinstance(child, ast.ClassDef) else 'def'
        yield f'{kind} {qualname}\n\n{doc.strip()}'
      if isinstance(child, ast.ClassDef):
        yield from _docstring_sections(child, qualname)


def _module_text(path: pathlib.Path, module: str) -> str:
  try:
    with warnings.catch_warnings():   # invalid escape sequences in old sources
      warnings.simplefilter('ignore')
      tree = ast.parse(path.read_bytes(), filename=str(path))
  except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
    return ''   # anything odd (test fixtures with bad syntax or encodings) is skipped
  sections = list(_docstring_sections(tree, module))
  doc = ast.get_docstring(tree, clean=True)
  if doc:
    sections.insert(0, doc.strip())
  if not sections:
    return ''
  return f'module {module}\n\n' + '\n\n'.join(sections)


def _module_documents() -> Iterator[tuple[str, str]]:
  root = pathlib.Path(sysconfig.get_paths()['stdlib'])
  for path in sorted(root.rglob('*.py'), key=lambda p: p.relative_to(root).as_posix()):
    rel = path.relative_to(root)
    dirs, stem = rel.parts[:-1], path.stem
    if any(d in _SKIP_DIRS or d.startswith(('test', 'config-')) or not d.isidentifier()
           for d in dirs):
      continue
    if stem.startswith('test') or stem == '__main__' or (stem.startswith('_') and stem != '__init__'):
      continue   # tests, scripts and private duplicates (e.g. _pydecimal)
    module = '.'.join(dirs) if stem == '__init__' else '.'.join((*dirs, stem))
    text = _module_text(path, module)
    if text:
      yield f'module:{module}', text


def documents() -> Iterator[tuple[str, str]]:
  """(doc_id, text) of every document of the embedded corpus, in a fixed order."""
  yield from _topic_documents()
  yield from _module_documents()


# ----------------------------------------------------------------------------- builder

class JaxlabCorpus(tfds.core.GeneratorBasedBuilder):
  """Python's own documentation: pydoc topics and standard-library docstrings."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'pydoc topics + stdlib docstrings, 5% of documents held out.'}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(
      name=PY_CONFIG, description=f'Built from Python {sys.version.split()[0]}.')]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup touches the `importlib_resources` backport (not a dependency of
    # tensorflow-datasets) for classes in an installed package; this file is the answer.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({'id': tfds.features.Text(),
                                             'text': tfds.features.Text()}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager   # nothing to download
    docs = list(documents())
    n_chars = sum(len(text) for _, text in docs)
    if n_chars < MIN_CHARS:
      raise RuntimeError(
          f'the embedded corpus has only {n_chars:,} characters (< {MIN_CHARS:,}); this Python '
          f'({sys.executable}) lacks its standard-library sources or pydoc_data. Use '
          "data.source='files' or data.source='tfds' instead.")
    return {split: self._generate_examples(docs, split) for split in SPLITS}

  def _generate_examples(self, docs, split):
    for doc_id, text in docs:
      if split_of(doc_id) == split:
        yield doc_id, {'id': doc_id, 'text': text}


# ----------------------------------------------------------------------------- preparing

@contextlib.contextmanager
def file_lock(path: str):
  """An exclusive advisory lock (fcntl) on `path`, held for the `with` block."""
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_tfds():
  """Silences TFDS's progress bars, info logs and banners for the block."""
  from tensorflow_datasets.core.utils import tqdm_utils
  was_active = getattr(tqdm_utils, '_active', True)
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  tfds.display_progress_bar(False)
  absl_logger.setLevel(logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    absl_logger.setLevel(level)
    tfds.display_progress_bar(was_active)


def prepared_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The TFDS builder `name` in `data_dir`, prepared as array_record if it is not yet.

  Safe when several processes call it at once: one builds, the others wait on the lock
  and then read what it built. Raises whatever TFDS raises if it cannot be built.
  """
  os.makedirs(data_dir, exist_ok=True)
  with _quiet_tfds():
    builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
    if builder.is_prepared():
      return builder
    lock_name = '.' + name.replace('/', '_').replace(':', '_') + '.lock'
    with file_lock(os.path.join(data_dir, lock_name)):
      builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
      if not builder.is_prepared():
        logging.getLogger(__name__).info('building TFDS dataset %s in %s (one time)',
                                            name, data_dir)
        builder.download_and_prepare(
            file_format='array_record',
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
  return builder


def data_source(split: str, data_dir: str = ''):
  """The embedded corpus' `split` ('train' or 'validation') as a random-access source.

  Each element is {'id': bytes, 'text': bytes} (UTF-8).
  """
  return prepared_builder(NAME, default_data_dir(data_dir)).as_data_source(split=split)
