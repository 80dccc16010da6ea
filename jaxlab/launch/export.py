"""`launch.py export RUN_DIR [--step N] --format hf --out DIR`: a run's checkpoint as a
Hugging Face model directory that transformers' AutoModelForCausalLM.from_pretrained (and
so lm-eval-harness, `lm_eval --model hf --model_args pretrained=DIR`) loads.

Writes config.json, generation_config.json, the weights (jaxlab.interop.hf.save: muP
folded in, sharded above --max-shard-size) and, when the run's tokenizer is a Hugging Face
one, its files (tokenizer.json, tokenizer_config.json, special_tokens_map.json). Only the
params are restored from the checkpoint (orbax partial restore), onto the run's mesh, and
verified against the checkpoint's fingerprint (a corrupt step is refused, naming the
others).
The model is the one the run holds at that step (a growth run's small model before its
growth step). Refused, with the reason: a step inside a 'random' growth ramp (a block
blended with the identity by a gate < 1 is not a Llama block).
"""
from __future__ import annotations

import pathlib
import shutil

import jax

from jaxlab import data as data_lib
from jaxlab import growth
from jaxlab.config import load_run_dir
from jaxlab.config.hf import init_dir
from jaxlab.config.types import ConfigError
from jaxlab.interop import hf
from jaxlab.launch import outputs
from jaxlab.parallel import make_mesh
from jaxlab.rundir.checkpoint import Checkpointer, Unverified, checkpoint_dir
from jaxlab.train.program import build_program
from jaxlab.train.runnable import resolve

TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json')
_UNITS = {'': 1, 'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'KIB': 2**10, 'MIB': 2**20,
          'GIB': 2**30}


def parse_size(text: str, option: str = '--max-shard-size') -> int:
  """'5GB', '500MB', '2GiB' or a byte count -> bytes (as transformers' max_shard_size)."""
  t = text.strip().upper()
  digits = t.rstrip('KMGIB')
  unit = t[len(digits):]
  try:
    value = float(digits) * _UNITS[unit]
  except (ValueError, KeyError):
    value = 0
  if value < 1:
    raise ConfigError(f'{option} {text!r} is not a size: expected e.g. 5GB, 500MB, 2GiB or bytes')
  return int(value)


def _check_foldable(cfg, phases, k: int, step: int):
  g, phase = cfg.growth, phases[k]
  if g.method == 'random' and g.ramp_steps and phase.event == 'grow' and \
      step < phase.start_step + g.ramp_steps:
    raise ConfigError(
        f'step {step} is inside the growth ramp (growth.ramp_steps={g.ramp_steps} from step '
        f'{phase.start_step}): the new blocks compute g f(x) + (1 - g) x with g < 1, which no '
        'Llama weights express; export a step >= '
        f'{phase.start_step + g.ramp_steps}')


def _sources(cfg, run_dir: pathlib.Path) -> list:
  """What an export reads: the run, the Hugging Face folder it was initialised from, the
  tokenizer's folder. None of them may be its --out."""
  out = [run_dir]
  if cfg.model.init:
    out.append(init_dir(cfg.model.init))
  tok = cfg.data.tokenizer
  if tok != 'byte':
    out.append(pathlib.Path(tok) if pathlib.Path(tok).is_dir() else pathlib.Path(tok).parent)
  return out


def export_run(run_dir: str | pathlib.Path, out: str | pathlib.Path, *, step: int | None = None,
               dtype: str = 'float32', max_shard_bytes: int = 5 * 10**9,
               max_positions: int | None = None, overwrite: bool = False
               ) -> tuple[int, list[str]]:
  """Writes the run's checkpoint at `step` (default: newest) to `out`, whole or not at all
  (jaxlab.launch.outputs); (step, files)."""
  run_dir, out = pathlib.Path(run_dir), pathlib.Path(out)
  if not (run_dir / 'config.json').is_file():
    raise ConfigError(f'{run_dir}: no config.json there (not a jaxlab run directory)')
  cfg = resolve(load_run_dir(run_dir))
  sources = _sources(cfg, run_dir)
  outputs.check_out(out, option='--out', overwrite=overwrite, sources=sources)
  if dtype not in hf.DTYPES:
    raise ConfigError(f'--dtype {dtype!r}: allowed: {", ".join(hf.DTYPES)}')
  ckpt_dir = checkpoint_dir(cfg, run_dir)
  manager = Checkpointer(ckpt_dir, keep=cfg.train.keep_checkpoints, async_save=False)
  steps = manager.all_steps()
  manager.close()
  if not steps:
    raise ConfigError(f'{run_dir}: the run has no checkpoints')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ConfigError(f'--step {step}: {run_dir} has checkpoints at steps {steps}')
  phases = growth.phases(cfg)
  k = growth.phase_index(phases, step)
  _check_foldable(cfg, phases, k, step)
  try:
    tokenizer = data_lib.make_tokenizer(cfg.data)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  program = build_program(cfg, make_mesh(cfg.mesh), k, phases)
  manager = Checkpointer(ckpt_dir, keep=cfg.train.keep_checkpoints, async_save=False)
  try:
    params = manager.restore_params(step, program.abstract_state)
  except Unverified as err:
    raise ConfigError(f'{err}: the checkpoint is corrupt; export another step with --step '
                      f'(steps: {steps})') from None
  finally:
    manager.close()
  with outputs.atomic_dir(out, option='--out', overwrite=overwrite, sources=sources,
                          writer=jax.process_index() == 0) as tmp:
    files = hf.save(params, program.model.cfg, tmp, dtype=dtype,
                    max_shard_bytes=max_shard_bytes,
                    max_positions=max_positions or cfg.data.seq_len, bos_id=tokenizer.bos_id,
                    eos_id=getattr(tokenizer, 'eos_id', None))
    if isinstance(tokenizer, data_lib.HFTokenizer) and files:
      shutil.copyfile(tokenizer.path, tmp / 'tokenizer.json')
      for name in TOKENIZER_FILES[1:]:
        if (tokenizer.dir / name).is_file():
          shutil.copyfile(tokenizer.dir / name, tmp / name)
          files.append(name)
      files.append('tokenizer.json')
  return step, files


def main(args) -> int:
  size = parse_size(args.max_shard_size)
  if args.max_positions is not None and args.max_positions < 1:
    raise ConfigError(f'--max-positions {args.max_positions} must be >= 1')
  step, files = export_run(args.run_dir, args.out, step=args.step, dtype=args.dtype,
                           max_shard_bytes=size, max_positions=args.max_positions,
                           overwrite=args.overwrite)
  print(f'wrote {args.out} from {args.run_dir} step {step}: {", ".join(files)}')
  return 0
