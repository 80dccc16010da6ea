"""`launch.py prepare SRC... --tokenizer TOK --out DIR`: a corpus tokenised once into a
prepared dataset (jaxlab.data.prepared's format; jaxlab.data.prepare does the work).

--out is made whole or not at all (jaxlab.launch.outputs.atomic_dir): the shards and then
the manifest are written into a temporary sibling `.<name>.partial-<host>-<pid>`, renamed
to DIR at the end; a prepare killed at any point leaves no DIR readable as a dataset, and
the next prepare next to it removes what killed ones left. A DIR that holds a dataset of
the same inputs (the sources' contents, tokenizer, text field, val fraction, shard
counts) is left as it is (exit 0); any other non-empty DIR is refused (exit 2), as is
bad input: one line naming the file and line (or row).
"""
from __future__ import annotations

import pathlib
import resource
import time

from jaxlab.config.types import ConfigError
from jaxlab.data import prepare as engine
from jaxlab.data import prepared
from jaxlab.launch import outputs


def _check_out(out: str) -> pathlib.Path:
  if '://' in out:
    raise ConfigError(f'--out {out}: a prepare writes a local directory; copy it to the bucket '
                      'afterwards (gcloud storage cp -r); data.path reads it there')
  return pathlib.Path(out).expanduser().absolute()


def _summary(manifest: dict) -> str:
  splits = manifest['splits']
  parts = [f'{name} {sum(s["documents"])} documents, {sum(s["tokens"])} tokens in '
           f'{len(s["shards"])} shard{"s" * (len(s["shards"]) != 1)}'
           for name, s in splits.items()]
  n = len(manifest['sources'])
  return f'{n} source file{"s" * (n != 1)}; ' + '; '.join(parts)


def _cpu_seconds() -> float:
  """CPU time of this process and its finished children (the prepare's workers)."""
  return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                               resource.getrusage(resource.RUSAGE_CHILDREN)))


def main(args) -> int:
  out = _check_out(args.out)
  try:
    plan, tok = engine.make_plan(args.sources, args.tokenizer, args.text_field,
                                 args.val_fraction, args.shards, args.workers)
    if (out / prepared.MANIFEST).is_file():
      manifest = prepared.read_manifest(str(out), key='--out')
      diff = engine.differences(manifest, plan, tok)
      if diff:
        raise ConfigError(f'--out {out} holds a prepared dataset of other inputs (it differs '
                          f'in {"; ".join(diff)}): pick another --out, or delete it first')
      print(f'{out} is already prepared from these inputs ({_summary(manifest)}); nothing '
            'to do')
      return 0
    if out.is_dir() and any(out.iterdir()):
      raise ConfigError(f'--out {out} is not empty and holds no prepared dataset ({prepared.MANIFEST}'
                        '): pick a new or empty directory')
    start, cpu = time.perf_counter(), _cpu_seconds()
    with outputs.atomic_dir(out, option='--out') as tmp:
      manifest = engine.write(plan, tok, tmp)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
  except ValueError as err:
    raise ConfigError(str(err)) from None
  tokens = sum(sum(s['tokens']) for s in manifest['splits'].values())
  print(f'prepared {out}: {_summary(manifest)}')
  print(f'{tokens} tokens in {seconds:.2f} s with {plan.workers} worker'
        f'{"s" * (plan.workers != 1)}: {tokens / max(seconds, 1e-9):.4g} tokens/s; '
        f'{cpu:.2f} CPU seconds, {tokens / max(cpu, 1e-9):.4g} tokens per CPU second')
  return 0
