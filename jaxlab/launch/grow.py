"""`launch.py grow --from RUN_DIR|hf:DIR --out RUN_DIR2 ...`: grow a trained run's
checkpoint (here) or a Hugging Face model (jaxlab.launch.grow_hf) into a new run directory
that `launch.py run` continues.

The new run's config is the source run's with `model` = the grown model and a growth
section that describes exactly this event (source sizes, method, at_tokens = the
checkpoint's tokens). So the new run directory reads like a run that grew in place:
its checkpoint at the growth step holds the grown state (made by the same transition
as an in-run growth event), metrics.jsonl holds the source run's records up to that
step plus the growth event, and token / FLOP counters carry on.
"""
from __future__ import annotations

import dataclasses
import pathlib
import shlex

import jax

from jaxlab import data as data_lib
from jaxlab.config import apply_overrides, from_dict, load_run_dir, parse_ranges
from jaxlab.config.hf import init_dir, model_config
from jaxlab.config.types import Config, ConfigError, GrowthConfig
from jaxlab.growth import plan as plan_lib
from jaxlab.growth.depth import insert_every
from jaxlab.launch import grow_hf, outputs
from jaxlab.parallel import make_mesh
from jaxlab.rundir.checkpoint import Checkpointer, checkpoint_dir
from jaxlab.rundir.directory import RunDir, growth_event
from jaxlab.train.program import build_program
from jaxlab.train.runnable import resolve


def _normalized(m):
  return dataclasses.replace(m, head_dim=m.dim_per_head, d_ff=m.ff_dim, n_kv_heads=m.kv_heads)


def grown_config(src_cfg: Config, out_dir: pathlib.Path, step: int, method: str, factor: int,
                 overrides: list[str]) -> Config:
  if src_cfg.growth.method != 'none':
    raise ConfigError(f'the source run already has a growth section (growth.method='
                      f'{src_cfg.growth.method!r}); growing a grown run again is not supported')
  src = src_cfg.model
  target = src
  if method in plan_lib.DEPTH_METHODS and method != 'layers':
    target = dataclasses.replace(src, n_layers=src.n_layers * factor)
  tps = plan_lib.tokens_per_step(src_cfg)
  cfg = dataclasses.replace(
      src_cfg, name=out_dir.name, model=target,
      train=dataclasses.replace(src_cfg.train, workdir=str(out_dir.parent)),
      growth=GrowthConfig(method=method, at_tokens=step * tps, factor=factor,
                          n_layers=src.n_layers, d_model=src.d_model, n_heads=src.n_heads,
                          n_kv_heads=src.kv_heads, d_ff=src.ff_dim))
  if step >= cfg.train.steps and not any(o.startswith('train.steps=') for o in overrides):
    raise ConfigError(f'the checkpoint is at step {step} and the source run has train.steps='
                      f'{cfg.train.steps}; pass train.steps=N (N > {step}) for the grown run')
  cfg = resolve(apply_overrides(cfg, overrides))
  phases = plan_lib.phases(cfg)
  if len(phases) != 2 or phases[1].start_step != step:
    raise ConfigError(f'the overrides move the growth point away from the checkpoint step '
                      f'{step} (train.batch_size and data.seq_len must stay as in the source run)')
  if _normalized(phases[0].model) != _normalized(src):
    raise ConfigError('the overrides change the source model (growth.* sizes or model fields '
                      'other than the grown sizes); the grown run must start from the '
                      f'checkpoint\'s model {src}')
  return cfg


def grow_checkpoint(src_dir: str | pathlib.Path, out_dir: str | pathlib.Path, *, method: str,
                    factor: int = 4, step: int | None = None,
                    overrides: list[str] = (), overwrite: bool = False) -> Config:
  """Writes `out_dir` (config.json, metrics.jsonl, checkpoints/<step>), whole or not at
  all; returns its config."""
  src_dir, out_dir = pathlib.Path(src_dir), pathlib.Path(out_dir)
  if method in plan_lib.DEPTH_METHODS and method != 'layers' and factor < 2:
    raise ConfigError(f'--factor {factor} is not valid: the target has source layers x factor '
                      'layers, so --factor must be an integer >= 2')
  outputs.check_out(out_dir, option='--out', overwrite=overwrite, sources=[src_dir])
  src_run = RunDir(src_dir, writer=False)
  found = src_run.read_config()
  if found is None:
    raise ConfigError(f'--from {src_dir}: no config.json there (not a jaxlab run directory)')
  src_cfg = from_dict(found[0])
  src_ckpt = Checkpointer(checkpoint_dir(src_cfg, src_dir), keep=src_cfg.train.keep_checkpoints,
                          async_save=False)
  steps = src_ckpt.all_steps()
  if not steps:
    raise ConfigError(f'--from {src_dir}: the run has no checkpoints')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ConfigError(f'--step {step}: {src_dir} has checkpoints at steps {steps}')
  cfg = grown_config(src_cfg, out_dir, step, method, factor, list(overrides))
  command = shlex.join(['launch.py', 'grow', '--from', str(src_dir), '--step', str(step),
                        '--method', method, '--factor', str(factor), '--out', str(out_dir),
                        *overrides])
  cfg = dataclasses.replace(cfg, growth=dataclasses.replace(cfg.growth, source=command))
  outputs.external_checkpoints(cfg, out_dir)
  mesh = make_mesh(cfg.mesh)
  src_program = build_program(src_cfg, mesh)
  out_program = build_program(cfg, mesh, 1)
  tokenizer = data_lib.make_tokenizer(cfg.data)
  batch = cfg.train.batch_size // jax.process_count()
  proc = dict(process_index=jax.process_index(), process_count=jax.process_count())
  iterator = data_lib.make_train_iterator(cfg.data, tokenizer, batch_size=batch, **proc)
  restored = src_ckpt.restore(step, src_program.abstract_state, iterator)
  src_ckpt.close()
  state = out_program.enter(restored.state)
  # The source run's records up to the checkpoint, then the growth event.
  lines = [rec for rec in src_run.read_lines() if 'event' not in rec and rec.get('step', 0) <= step]
  lines.append(growth_event(
      event='grow', step=step, tokens=restored.meta['tokens'], flops=restored.meta['flops'],
      method=method, optimizer=cfg.growth.optimizer, src=plan_lib.describe(src_cfg.model),
      dst=plan_lib.describe(cfg.model), from_run=str(src_dir)))
  outputs.write_grown_run(out_dir, cfg, lines, step, state, iterator,
                          {'tokens': restored.meta['tokens'], 'flops': restored.meta['flops']},
                          overwrite=overwrite, sources=[src_dir],
                          writer=jax.process_index() == 0)
  return cfg


def _growth_layers(args, n_src: int) -> list[int] | None:
  """The layer map of --layers RANGES (SOLAR / Yi) or --insert-every K (LLaMA-Pro)."""
  if args.layers is not None and args.insert_every is not None:
    raise ConfigError('--layers and --insert-every exclude each other')
  if args.insert_every is not None:
    if args.method != 'zero':
      raise ConfigError(f'--insert-every adds identity blocks: it needs --method zero, not '
                        f'{args.method!r}')
    try:
      return insert_every(n_src, args.insert_every)
    except ValueError as err:
      raise ConfigError(f'--insert-every {args.insert_every}: {err}') from None
  if args.layers is not None:
    if args.method not in ('layers', 'zero', 'random'):
      raise ConfigError(f'--layers is a layer map for --method layers, zero or random, not '
                        f'{args.method!r}')
    return list(parse_ranges(args.layers, '--layers'))
  if args.method == 'layers':
    raise ConfigError('--method layers needs --layers RANGES (e.g. --layers 0-23,8-31)')
  return None


def main(args) -> int:
  out = pathlib.Path(args.out)
  if args.source.startswith('hf:'):
    n_src = model_config(init_dir(args.source)).n_layers
    cfg = grow_hf.grow_from_hf(args.source, out, method=args.method,
                               layers=_growth_layers(args, n_src), factor=args.factor,
                               experiment=args.experiment, overrides=args.overrides,
                               overwrite=args.overwrite)
    print(f'wrote {out}: {args.method} growth of {args.source} ({cfg.model.n_layers} layers'
          f'{", trainable: " + cfg.train.trainable if cfg.train.trainable else ""}); continue '
          f'it with: python launch.py run {out}')
    return 0
  if args.experiment:
    raise ConfigError('--experiment applies to --from hf:DIR (a jaxlab run has its own config)')
  overrides = list(args.overrides)
  if args.layers is not None or args.insert_every is not None:
    src_dir = pathlib.Path(args.source)
    if not (src_dir / 'config.json').is_file():
      raise ConfigError(f'--from {src_dir}: no config.json there (not a jaxlab run directory)')
    layers = _growth_layers(args, load_run_dir(src_dir).model.n_layers)
    overrides = [f'growth.layers={",".join(map(str, layers))}',
                 f'model.n_layers={len(layers)}'] + overrides
  cfg = grow_checkpoint(args.source, out, method=args.method, factor=args.factor,
                        step=args.step, overrides=overrides, overwrite=args.overwrite)
  g = cfg.growth
  print(f'wrote {out}: {g.method} growth of {args.source} at step '
        f'{g.at_tokens // (cfg.train.batch_size * cfg.data.seq_len)}; continue it with: '
        f'python launch.py run {out}')
  return 0
