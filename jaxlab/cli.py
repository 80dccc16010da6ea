"""Command line: `python launch.py {run,sweep,grow,export,submit,compile,report,steplaw,
coordcheck} ...`.

Configuration mistakes -- and a run directory in use, a full disk or an unwritable
directory -- exit with status 2 and one clear line (no traceback), before anything is
compiled where the input allows. A diverged run exits with 1; a run stopped by SIGTERM /
SIGINT saves a checkpoint (at a step every host agrees on) and exits with 128 + the
signal number.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import signal
import sys
import typing

from jaxlab import config as config_lib
from jaxlab import gpu_flags
from jaxlab import submit as submit_lib
from jaxlab import sweep_jobs
from jaxlab import sweep_points
from jaxlab.config_types import ConfigError

_PARAMETRIZATIONS = typing.get_args(
    typing.get_type_hints(config_lib.ModelConfig)['parametrization'])


def _cmd_run(args) -> int:
  gpu_flags.apply_and_log()   # before anything starts JAX's backend
  cfg = config_lib.load(args.experiment, args.overrides)
  from jaxlab import train as train_lib  # heavy imports only once the config is good
  try:
    summary = train_lib.train(cfg)
  except train_lib.Diverged as err:
    print(f'error: {err}', file=sys.stderr)
    return 1
  except train_lib.Preempted as err:
    print(str(err), file=sys.stderr)
    return 128 + err.signum
  print(f"done: {train_lib.run_dir_of(cfg)} (step {summary['step']}, "
        f"final loss {summary['final_loss']}, val loss {summary['final_val_loss']})")
  return 0


def _cmd_sweep(args) -> int:
  submit_lib.check_options(args)
  sweep_dir, runs = sweep_points.sweep_configs(args.experiment, args.grid, args.overrides,
                                                args.seeds, args.vary)
  if args.jobs < 1:
    raise ConfigError(f'--jobs {args.jobs} must be >= 1')
  if args.target != 'local':
    if args.point is not None or args.jobs != 1:
      raise ConfigError(f'--point and --jobs run points here; --target {args.target} submits '
                        'every point (drop them)')
    return submit_lib.sweep(args, sweep_dir, len(runs))
  points = list(enumerate(runs))
  if args.point is not None:
    if not 0 <= args.point < len(runs):
      raise ConfigError(f'--point {args.point} is out of range: this sweep has {len(runs)} '
                        f'points, 0 to {len(runs) - 1}')
    points = [points[args.point]]
  if args.dry_run:
    print(f'sweep {sweep_dir}: {len(runs)} points')
    for i, (label, _) in points:
      print(f'  --point {i}: {label}')
    return 0
  gpu_flags.apply_and_log()   # before the point subprocesses too: they inherit XLA_FLAGS
  if args.jobs > 1 and len(points) > 1:
    argv = submit_lib.sweep_argv(args.experiment, args.overrides, args.grid, args.seeds,
                                 args.vary)[1:]   # without 'launch.py'
    return sweep_jobs.run_parallel(argv, sweep_dir, points, len(runs), args.jobs)
  from jaxlab import train as train_lib
  outcome = {}
  for i, (label, cfg) in points:
    summary_path = train_lib.run_dir_of(cfg) / 'summary.json'
    if summary_path.exists() and json.loads(summary_path.read_text()).get('status') == 'completed':
      print(f'[{i + 1}/{len(runs)}] {label}: finished earlier, skipped')
      outcome[label] = 'completed'
      continue
    print(f'[{i + 1}/{len(runs)}] {label}')
    try:
      train_lib.train(cfg)
      outcome[label] = 'completed'
    except train_lib.Diverged as err:
      print(f'  diverged: {err}', file=sys.stderr)
      outcome[label] = 'diverged'
    except train_lib.Preempted as err:
      print(str(err), file=sys.stderr)
      return 128 + err.signum
  print(sweep_jobs.outcome_line(sweep_dir, outcome))
  return 0


def _growth_layers(args, n_src: int) -> list[int] | None:
  """The layer map of --layers RANGES (SOLAR / Yi) or --insert-every K (LLaMA-Pro)."""
  from jaxlab.growth.depth import insert_every
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
    return list(config_lib.parse_ranges(args.layers, '--layers'))
  if args.method == 'layers':
    raise ConfigError('--method layers needs --layers RANGES (e.g. --layers 0-23,8-31)')
  return None


def _cmd_grow(args) -> int:
  out = pathlib.Path(args.out)
  if args.source.startswith('hf:'):
    from jaxlab.interop import grow_hf, hf_config
    n_src = hf_config.model_config(hf_config.init_dir(args.source)).n_layers
    cfg = grow_hf.grow_from_hf(args.source, out, method=args.method,
                               layers=_growth_layers(args, n_src), factor=args.factor,
                               experiment=args.experiment, overrides=args.overrides)
    print(f'wrote {out}: {args.method} growth of {args.source} ({cfg.model.n_layers} layers'
          f'{", trainable: " + cfg.train.trainable if cfg.train.trainable else ""}); continue '
          f'it with: python launch.py run {out}')
    return 0
  if args.experiment:
    raise ConfigError('--experiment applies to --from hf:DIR (a jaxlab run has its own config)')
  from jaxlab.growth.from_checkpoint import grow_checkpoint
  overrides = list(args.overrides)
  if args.layers is not None or args.insert_every is not None:
    src_dir = pathlib.Path(args.source)
    if not (src_dir / 'config.json').is_file():
      raise ConfigError(f'--from {src_dir}: no config.json there (not a jaxlab run directory)')
    layers = _growth_layers(args, config_lib.load_run_dir(src_dir).model.n_layers)
    overrides = [f'growth.layers={",".join(map(str, layers))}',
                 f'model.n_layers={len(layers)}'] + overrides
  cfg = grow_checkpoint(args.source, out, method=args.method, factor=args.factor,
                        step=args.step, overrides=overrides)
  g = cfg.growth
  print(f'wrote {out}: {g.method} growth of {args.source} at step '
        f'{g.at_tokens // (cfg.train.batch_size * cfg.data.seq_len)}; continue it with: '
        f'python launch.py run {out}')
  return 0


def _cmd_export(args) -> int:
  from jaxlab.interop import export
  size = export.parse_size(args.max_shard_size)
  if args.max_positions is not None and args.max_positions < 1:
    raise ConfigError(f'--max-positions {args.max_positions} must be >= 1')
  step, files = export.export_run(args.run_dir, args.out, step=args.step, dtype=args.dtype,
                                  max_shard_bytes=size, max_positions=args.max_positions)
  print(f'wrote {args.out} from {args.run_dir} step {step}: {", ".join(files)}')
  return 0


def _cmd_report(args) -> int:
  from jaxlab.report import write_report
  try:
    path = write_report(pathlib.Path(args.dir), baseline=args.baseline)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  print(f'wrote {path}')
  return 0


def _number(option: str, text: str, integer: bool = False) -> float:
  """A positive number from the command line: 1e9, 1_000_000, 2048."""
  try:
    value = float(text)
  except ValueError:
    value = float('nan')
  if not (value > 0 and value != float('inf')) or (integer and not value.is_integer()):
    kind = 'an integer >= 1' if integer else 'a number > 0 (e.g. 1e9)'
    raise ConfigError(f'{option} {text!r} is not valid: expected {kind}')
  return value


def _cmd_steplaw(args) -> int:
  from jaxlab.optim.steplaw import batch_sequences, steplaw
  n_params = _number('--params', args.params)
  n_tokens = _number('--tokens', args.tokens)
  seq_len = (int(_number('--seq-len', args.seq_len, integer=True)) if args.seq_len is not None
             else config_lib.DataConfig().seq_len)
  lr, batch_tokens = steplaw(n_params, n_tokens)
  print(f'step law (Li et al. 2025) for N={n_params:g} non-embedding params, D={n_tokens:g} tokens')
  print(f'lr: {lr:.4g}')
  print(f'batch_tokens: {batch_tokens:.0f}')
  print(f'batch_sequences: {batch_sequences(batch_tokens, seq_len)} (seq_len {seq_len})')
  return 0


def _cmd_coordcheck(args) -> int:
  from jaxlab.diagnostics import coordcheck
  widths = coordcheck.parse_widths(args.widths)
  if args.seeds < 1:
    raise ConfigError(f'--seeds {args.seeds} must be >= 1')
  cfg = config_lib.load(args.experiment, args.overrides)
  cfgs = coordcheck.width_configs(cfg, widths, args.parametrization, args.lr, args.steps)
  param = cfgs[0].model.parametrization
  out = pathlib.Path(args.out or
                     pathlib.Path(cfg.train.workdir) / f'coordcheck_{cfg.name}_{param}')
  result = coordcheck.run(cfg, widths, param, args.seeds, args.steps, args.lr,
                          log=lambda line: print(line, flush=True))
  coordcheck.write_outputs(result, out)
  print(coordcheck.render_table(result, per_layer=False))
  n_pass = sum(row['pass'] for row in result['rows'] if '.' not in row['sublayer'])
  print(f'{n_pass} of {len(coordcheck.SUBLAYERS)} sublayers flat within '
        f'+-{coordcheck.SLOPE_TOLERANCE}; wrote {out}/coordcheck.{{png,md,json}}')
  return 0


# ------------------------------------------------------------------ compile (jaxlab.aot)

def _cmd_compile(args) -> int:
  from jaxlab import aot   # libtpu is only needed here
  aot.use_cpu_host()
  cfg = config_lib.load(args.experiment, args.overrides)
  return aot.compile_and_report(cfg, args.target, args.slices, not args.no_estimate)[1]


def _add_compile(sub) -> None:
  comp = sub.add_parser('compile', help='compile every phase of a run for a TPU slice from this '
                        'machine (no TPU needed): HBM per chip, fits, XLA\'s estimated MFU; '
                        'writes <workdir>/<name>/compile.json')
  comp.add_argument('experiment', help='as for run')
  comp.add_argument('overrides', nargs='*', help='config overrides, e.g. model.remat=full')
  comp.add_argument('--target', required=True, metavar='tpu:TYPE',
                    help='a Cloud TPU accelerator type (tpu:v5p-64, tpu:v5e-16 or '
                    'tpu:v5litepod-16, tpu:v6e-8, tpu:v4-32) or topology (tpu:v5e:2x2); or '
                    'gpu:h100xN (N GPUs per host; needs the [gpu] extra)')
  comp.add_argument('--slices', type=int, default=1, metavar='N',
                    help='TPU: N such slices over the data-center network (set mesh.dcn_* to '
                    'span them); GPU: N such hosts')
  comp.add_argument('--no-estimate', action='store_true',
                    help="skip XLA's FLOPs and step-time estimate (two more compiles per "
                    'phase, of the step with 0 and 1 layers)')
  comp.set_defaults(func=_cmd_compile)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='launch.py', description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', required=True)
  run = sub.add_parser('run', help='train one run: run EXPERIMENT [key=value ...]')
  run.add_argument('experiment', help="experiment name ('demo'), path to its .py file, or a "
                   'run directory to continue')
  run.add_argument('overrides', nargs='*', help='config overrides, e.g. train.steps=100')
  run.set_defaults(func=_cmd_run)
  sweep = sub.add_parser('sweep', help='run a grid of configs (x seeds), one after another or '
                         '--jobs J at a time')
  sweep.add_argument('experiment')
  sweep.add_argument('overrides', nargs='*', help='overrides applied to every run')
  sweep.add_argument('--grid', action='append', default=[], metavar='KEY=V1,V2',
                     help='a swept key and its values; repeat for a product')
  sweep.add_argument('--point', type=int, default=None, metavar='I',
                     help='run only point I (0-based, in --dry-run order)')
  sweep.add_argument('--seeds', type=int, default=None, metavar='N',
                     help="run every point with N seeds (offsets 0..N-1 added to train.seed "
                     "and data.seed; default: the experiment's SEEDS, else one run per point)")
  sweep.add_argument('--vary', choices=sorted(sweep_points.SEED_KEYS), default='both',
                     help='which seeds --seeds moves: both (default), init (train.seed) or '
                     'data (data.seed, the data order)')
  sweep.add_argument('--jobs', type=int, default=1, metavar='J',
                     help='run J points at a time, each in its own process (default 1: one '
                     'after another in this process); for CPUs: on a GPU or TPU keep 1, '
                     'each process takes the whole accelerator')
  submit_lib.add_options(sweep, sweep=True)
  sweep.set_defaults(func=_cmd_sweep)
  grow = sub.add_parser('grow', help='grow a run\'s checkpoint (or a Hugging Face model: '
                        '--from hf:DIR) into a new run directory')
  grow.add_argument('--from', dest='source', required=True, metavar='RUN_DIR|hf:DIR')
  grow.add_argument('--step', type=int, default=None, help='checkpoint step (default: newest)')
  grow.add_argument('--method', default='stack',
                    choices=['stack', 'interleave', 'layers', 'zero', 'random', 'split'])
  grow.add_argument('--factor', type=int, default=4,
                    help='depth growth factor (target layers / source layers); default 4')
  grow.add_argument('--layers', default=None, metavar='RANGES',
                    help='source layer of each target layer, ranges allowed: 0-23,8-31 '
                    '(SOLAR); for --method layers (or zero / random)')
  grow.add_argument('--insert-every', type=int, default=None, metavar='K',
                    help='--method zero: an identity copy after every K source layers (LLaMA-Pro)')
  grow.add_argument('--experiment', default=None, metavar='EXPERIMENT',
                    help='--from hf:DIR: the experiment whose config (data, optim, train) the '
                    'grown run takes (default: the Config defaults)')
  grow.add_argument('--out', required=True, metavar='RUN_DIR2')
  grow.add_argument('overrides', nargs='*',
                    help='overrides for the grown run, e.g. train.steps=2000 model.d_model=256')
  grow.set_defaults(func=_cmd_grow)
  export = sub.add_parser('export', help='write a run\'s checkpoint as a Hugging Face model '
                          'directory (from_pretrained, lm-eval-harness)')
  export.add_argument('run_dir', metavar='RUN_DIR')
  export.add_argument('--step', type=int, default=None, help='checkpoint step (default: newest)')
  export.add_argument('--format', default='hf', choices=['hf'])
  export.add_argument('--out', required=True, metavar='DIR')
  export.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'float16'])
  export.add_argument('--max-shard-size', default='5GB', metavar='SIZE',
                      help='one safetensors file up to this size, then shards + index (5GB)')
  export.add_argument('--max-positions', type=int, default=None, metavar='N',
                      help='max_position_embeddings in config.json (default: data.seq_len)')
  export.set_defaults(func=_cmd_export)
  submit = sub.add_parser('submit', help='run an experiment on a Cloud TPU slice or a SLURM '
                          'GPU cluster: submit --target tpu|slurm EXPERIMENT [key=value ...]')
  submit.add_argument('experiment', nargs='?', help='as for run (not needed by --action create, '
                      'setup, stop, delete; optional for logs)')
  submit.add_argument('overrides', nargs='*', help='config overrides, e.g. train.steps=100')
  submit_lib.add_options(submit, sweep=False)
  submit.set_defaults(func=submit_lib.submit)
  _add_compile(sub)
  report = sub.add_parser('report', help='write report.md and plots for a run or sweep dir')
  report.add_argument('dir')
  report.add_argument('--baseline', default=None, metavar='RUN|KEY=V1,V2',
                      help='RUN: also tabulate the FLOPs each run (method, over seeds) needs '
                      'to reach this one\'s final val loss (growth studies); KEY=V1,V2: each '
                      'run\'s paired differences against the run that differs only in KEY '
                      '(e.g. optim.name=adamw,sgd)')
  report.set_defaults(func=_cmd_report)
  coord = sub.add_parser('coordcheck', help='muP coordinate check: mean |activation| of every '
                         'sublayer vs width over the first steps; writes a plot and a slope table')
  coord.add_argument('experiment')
  coord.add_argument('overrides', nargs='*', help='config overrides applied at every width')
  coord.add_argument('--widths', default='64,128,256,512', metavar='W1,W2,...',
                     help='d_model values (default 64,128,256,512)')
  coord.add_argument('--parametrization', default=None, choices=_PARAMETRIZATIONS,
                     help="default: the experiment's model.parametrization")
  coord.add_argument('--steps', type=int, default=5, help='training steps (default 5)')
  coord.add_argument('--seeds', type=int, default=3,
                     help='init and data seeds to average over (default 3)')
  coord.add_argument('--lr', type=float, default=1e-2,
                     help='constant learning rate, no warmup (default 1e-2)')
  coord.add_argument('--out', default=None, metavar='DIR',
                     help='default: <train.workdir>/coordcheck_<experiment>_<parametrization>')
  coord.set_defaults(func=_cmd_coordcheck)
  steplaw = sub.add_parser('steplaw', help='Step Law (Li et al. 2025): the optimal lr and batch '
                           'for N non-embedding params and D tokens')
  steplaw.add_argument('--params', required=True, metavar='N',
                       help='non-embedding parameter count, e.g. 1e9')
  steplaw.add_argument('--tokens', required=True, metavar='D', help='training tokens, e.g. 1e11')
  steplaw.add_argument('--seq-len', default=None, metavar='T',
                       help='sequence length for the batch in sequences (default: data.seq_len\'s '
                       'default, %d)' % config_lib.DataConfig().seq_len)
  steplaw.set_defaults(func=_cmd_steplaw)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  # Overrides may come after options (sweep X --grid a=1,2 train.steps=5): argparse
  # leaves those as extras; anything else unknown is a usage error.
  args, extra = parser.parse_known_args(argv)
  if extra and (not hasattr(args, 'overrides') or any(e.startswith('-') for e in extra)):
    parser.error(f'unrecognized arguments: {" ".join(extra)}')
  if extra:
    args.overrides = list(args.overrides) + extra
  try:
    return args.func(args)
  except ConfigError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:   # a second Ctrl-C (the first one stops a run at a step boundary)
    print('interrupted', file=sys.stderr)
    return 128 + signal.SIGINT
