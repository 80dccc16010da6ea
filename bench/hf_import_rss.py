"""Peak host memory of a Hugging Face import (jaxlab.interop.hf.load) against the
checkpoint's size, on a locally generated ~1B-param random Llama (TinyLlama-1.1B's shapes:
d 2048, 22 layers, 32 / 4 heads, d_ff 5632, vocab 32000; float32, 4.4 GB).

  python bench/hf_import_rss.py [--dir /tmp/jaxlab_rss_ckpt] [--shard-gb 5] [--keep]

The checkpoint is written tensor by tensor (never whole in memory). Each measurement runs
in a fresh process: the peak resident set size (ru_maxrss) after the import, and the RSS
before it (Python + jax + numpy), are printed as a table with the ratio to the checkpoint's
bytes. The bar (issue 16): peak <= 1.5x the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys

TINYLLAMA = dict(vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4,
                 d_ff=5632, norm_eps=1e-5)

_CHILD = '''
import json, resource, sys, time
import psutil
import jax
from jaxlab.interop import hf
before = psutil.Process().memory_info().rss
t0 = time.perf_counter()
cfg, params = hf.load(sys.argv[1])
jax.block_until_ready(params)
seconds = time.perf_counter() - t0
n = sum(x.size for x in jax.tree.leaves(params))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({'rss_before': before, 'peak': peak, 'params': n, 'seconds': seconds}))
'''


def write_checkpoint(path: pathlib.Path, shard_bytes: int):
  import numpy as np
  from jaxlab.config import ModelConfig
  from jaxlab.config import hf as hf_config
  from jaxlab.interop import hf, st_files
  from jaxlab.models import schema
  cfg = ModelConfig(**TINYLLAMA)
  rng = np.random.default_rng(0)

  def tensors():
    for param in schema.specs(cfg).values():
      for name in hf.hf_names(param, cfg):
        shape = hf.hf_shape(param, cfg)
        yield name, rng.standard_normal(shape, dtype=np.float32) * 0.02
  files = st_files.write_sharded(tensors(), path, shard_bytes)
  config = hf_config.hf_config(cfg, dtype='float32', max_positions=2048, bos_id=1, eos_id=2)
  (path / 'config.json').write_text(json.dumps(config, indent=2))
  return files


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dir', default='/tmp/jaxlab_rss_ckpt')
  parser.add_argument('--shard-gb', type=float, default=5.0,
                      help='safetensors file size before sharding (default 5: one file)')
  parser.add_argument('--keep', action='store_true', help='keep the checkpoint afterwards')
  args = parser.parse_args()
  path = pathlib.Path(args.dir)
  if not (path / 'config.json').is_file():
    files = write_checkpoint(path, int(args.shard_gb * 1e9))
    print(f'wrote {path}: {", ".join(files)}', flush=True)
  size = sum(f.stat().st_size for f in path.glob('*.safetensors'))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', _CHILD, str(path)], capture_output=True,
                       text=True, env=env, check=True)
  r = json.loads(out.stdout.strip().splitlines()[-1])
  gb = 1e9
  print('| checkpoint | params | RSS before import | peak RSS | peak / checkpoint | '
        '(peak - before) / checkpoint | import s |')
  print('|---|---|---|---|---|---|---|')
  print(f'| {size / gb:.2f} GB ({len(list(path.glob("*.safetensors")))} file(s)) | '
        f'{r["params"] / 1e9:.3f} B | {r["rss_before"] / gb:.2f} GB | {r["peak"] / gb:.2f} GB | '
        f'{r["peak"] / size:.2f}x | {(r["peak"] - r["rss_before"]) / size:.2f}x | '
        f'{r["seconds"]:.1f} |')
  if not args.keep:
    shutil.rmtree(path)


if __name__ == '__main__':
  main()
