"""Command line: `python launch.py COMMAND ...`.

  run         train one run (an experiment, or a run directory to continue)
  sweep       a grid of configs x seeds: in turn, --jobs J at a time, or --target tpu|slurm
  grow        grow a run's checkpoint, or a Hugging Face model, into a new run directory
  export      a run's checkpoint as a Hugging Face model directory
  submit      run an experiment on a Cloud TPU slice or a SLURM GPU cluster
  compile     compile every phase of a run for a TPU slice from this machine
  show        a run's resolved config, parameter counts, tokens and FLOPs, growth phases
  prepare     tokenise a corpus once into a prepared dataset (data.source=prepared)
  report      report.md, tables and plots of a run or sweep directory
  fit         a scaling law fitted to a sweep's runs (jaxlab.scaling)
  coordcheck  the muP coordinate check
  steplaw     Step Law's lr and batch for N params and D tokens

Configuration mistakes -- and a run directory in use, a full disk or an unwritable
directory -- exit with status 2 and one clear line (no traceback), before anything is
compiled where the input allows. A diverged run exits with 1; a run stopped by SIGTERM /
SIGINT / SIGUSR1 (SLURM's warning before the time limit) saves a checkpoint (at a step
every host agrees on) and exits with 128 + the signal number.

The parser is built from jax-free modules; each command imports its own stack when it
runs (jaxlab.launch.<command>), so `report` loads no jax and a mistake in the arguments
is reported before anything heavy is imported.
"""
from __future__ import annotations

import argparse
import pathlib
import signal
import sys
import typing

from jaxlab import config as config_lib
from jaxlab.config.types import ConfigError
from jaxlab.launch import platforms
from jaxlab.launch.submit import options as submit_options
from jaxlab.report import write_report
from jaxlab.scaling import LAWS, MissingData, write_fit
from jaxlab.rundir.layout import SEED_KEYS

DESCRIPTION = ('jaxlab: train, grow, sweep, compile and report LLaMA-style models in JAX. '
               'Each command takes an experiment (a name under experiments/ or a .py file) and '
               'key.sub=value overrides; see README.md and docs/.')
_PARAMETRIZATIONS = typing.get_args(
    typing.get_type_hints(config_lib.ModelConfig)['parametrization'])


def _cmd_run(args) -> int:
  from jaxlab.launch import run
  return run.main(args)


def _cmd_sweep(args) -> int:
  from jaxlab.launch import sweep
  return sweep.main(args)


def _cmd_grow(args) -> int:
  from jaxlab.launch import grow
  return grow.main(args)


def _cmd_export(args) -> int:
  from jaxlab.launch import export
  return export.main(args)


def _cmd_submit(args) -> int:
  from jaxlab.launch.submit import commands
  return commands.submit(args)


def _cmd_compile(args) -> int:
  from jaxlab.launch import compile as compile_lib   # libtpu is only needed here
  return compile_lib.main(args)


def _cmd_show(args) -> int:
  from jaxlab.launch import show
  return show.main(args)


def _cmd_prepare(args) -> int:
  from jaxlab.launch import prepare
  return prepare.main(args)


def _cmd_coordcheck(args) -> int:
  from jaxlab.launch import coordcheck
  return coordcheck.main(args)


def _cmd_report(args) -> int:
  try:
    path = write_report(pathlib.Path(args.dir), baseline=args.baseline)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  print(f'wrote {path}')
  return 0


def _cmd_fit(args) -> int:
  try:
    path = write_fit(pathlib.Path(args.dir), args.law, method=args.method, count=args.params,
                     predict=args.predict, bootstrap=args.bootstrap)
  except MissingData as err:
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
  from jaxlab.optim.step_law import batch_sequences, steplaw   # imports jax
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



# ------------------------------------------------------------------ the parser

def _add_compile(sub) -> None:
  comp = sub.add_parser('compile', help='compile for a TPU slice from here: fits, est. MFU',
                        description='Compile every phase of a run for a TPU slice (or GPU hosts) '
                        'from this machine, no TPU needed: HBM per chip, whether it fits, XLA\'s '
                        'estimated MFU; writes <workdir>/<name>/compile.json.')
  comp.add_argument('experiment', help='as for run')
  comp.add_argument('overrides', nargs='*', help='config overrides, e.g. model.remat=full')
  comp.add_argument('--target', required=True, metavar='tpu:TYPE',
                    help='a Cloud TPU accelerator type (tpu:v5p-64, tpu:v5e-16 or '
                    'tpu:v5litepod-16, tpu:v6e-8, tpu:v4-32) or topology (tpu:v5e:2x2); or '
                    'gpu:h100xN (N GPUs per host; needs the [gpu] extra)')
  comp.add_argument('--slices', type=int, default=1, metavar='N',
                    help='TPU: N such slices over the data-center network (set mesh.dcn_* to '
                    'span them); GPU: N such hosts')
  comp.add_argument('--population', type=int, default=1, metavar='K',
                    help='compile the run as a member of a population of K (launch.py sweep '
                    '--population): one step trains all K; the table adds member-steps/s '
                    'per chip')
  comp.add_argument('--no-estimate', action='store_true',
                    help="skip XLA's FLOPs and step-time estimate (two more compiles per "
                    'phase, of the step with 0 and 1 layers)')
  comp.set_defaults(func=_cmd_compile)


def _add_prepare(sub) -> None:
  prep = sub.add_parser('prepare', help='tokenise a corpus once into a prepared dataset',
                        description='Tokenise text files once, in parallel, into a prepared '
                        'dataset: ArrayRecord shards of token ids and a manifest '
                        '(docs/data.md#preparing-a-corpus); train on it with '
                        'data.source=prepared data.path=DIR.')
  prep.add_argument('sources', nargs='+', metavar='SRC',
                    help='.txt (one document per file), .jsonl / .jsonl.gz (one per line), '
                    '.parquet (one per row) files or globs, local or URLs (gs://...)')
  prep.add_argument('--tokenizer', required=True, metavar='TOK',
                    help="as data.tokenizer: 'byte', a SentencePiece .model, or a Hugging Face "
                    'tokenizer.json (or a directory holding one)')
  prep.add_argument('--out', required=True, metavar='DIR', help='a new or empty local directory')
  prep.add_argument('--text-field', default='text', metavar='F',
                    help="the .jsonl field / .parquet column holding the text (default 'text')")
  prep.add_argument('--val-fraction', type=float, default=0.05, metavar='X',
                    help='the share of documents (by a hash of their text) in the validation '
                    'split (default 0.05)')
  prep.add_argument('--shards', type=int, default=None, metavar='N',
                    help='train shards (default: one per 512 MiB of source text, at least 1); '
                    'validation gets N x X of them, at least 1')
  prep.add_argument('--workers', type=int, default=None, metavar='W',
                    help='tokenizer processes, one core each (default: every CPU)')
  prep.set_defaults(func=_cmd_prepare)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='launch.py', description=DESCRIPTION)
  sub = parser.add_subparsers(dest='command', required=True)
  run = sub.add_parser('run', help='train one run, or continue a run directory')
  run.add_argument('experiment', help="experiment name ('demo'), path to its .py file, or a "
                   'run directory to continue')
  run.add_argument('overrides', nargs='*', help='config overrides, e.g. train.steps=100')
  run.set_defaults(func=_cmd_run)
  sweep = sub.add_parser('sweep', help='a grid of configs x seeds, in turn or --jobs J at once')
  sweep.add_argument('experiment')
  sweep.add_argument('overrides', nargs='*', help='overrides applied to every run')
  sweep.add_argument('--grid', action='append', default=[], metavar='KEY=V1,V2',
                     help='a swept key and its values; repeat for a product')
  sweep.add_argument('--point', type=int, default=None, metavar='I',
                     help='run only point I (0-based, in --dry-run order)')
  sweep.add_argument('--seeds', type=int, default=None, metavar='N',
                     help="run every point with N seeds (offsets 0..N-1 added to train.seed "
                     "and data.seed; default: the experiment's SEEDS, else one run per point)")
  sweep.add_argument('--vary', choices=sorted(SEED_KEYS), default='both',
                     help='which seeds --seeds moves: both (default), init (train.seed) or '
                     'data (data.seed, the data order)')
  sweep.add_argument('--jobs', type=int, default=1, metavar='J',
                     help='run J points at a time, each in its own process (default 1: one '
                     'after another in this process); for CPUs: on a GPU or TPU keep 1, '
                     'each process takes the whole accelerator')
  sweep.add_argument('--population', type=int, default=None, metavar='K',
                     help='train points that share every shape and the growth plan as one '
                     'program, K at most per program (seeds, optim.lr and optim.weight_decay '
                     "may differ); default: the experiment's POPULATION, else 1 (each point "
                     'on its own)')
  sweep.add_argument('--population-batching', choices=['auto', 'vmap', 'map'], default='auto',
                     help="how a population's step runs its members: vmap (batched into "
                     'each op; what a GPU or TPU wants), map (one after another inside the '
                     'one program; faster on a CPU), auto (default: map on a CPU, else vmap)')
  submit_options.add_options(sweep, sweep=True)
  sweep.set_defaults(func=_cmd_sweep)
  grow = sub.add_parser('grow', help='grow a checkpoint or an HF model into a new run')
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
  grow.add_argument('--overwrite', action='store_true',
                    help='replace a non-empty --out (never the source); the old folder goes '
                    'only once the grown run is complete')
  grow.add_argument('overrides', nargs='*',
                    help='overrides for the grown run, e.g. train.steps=2000 model.d_model=256')
  grow.set_defaults(func=_cmd_grow)
  export = sub.add_parser('export', help='a run\'s checkpoint as a Hugging Face model directory')
  export.add_argument('run_dir', metavar='RUN_DIR')
  export.add_argument('--step', type=int, default=None, help='checkpoint step (default: newest)')
  export.add_argument('--format', default='hf', choices=['hf'])
  export.add_argument('--out', required=True, metavar='DIR')
  export.add_argument('--overwrite', action='store_true',
                      help='replace a non-empty --out (never the run\'s own source); the old '
                      'folder goes only once the new one is complete')
  export.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'float16'])
  export.add_argument('--max-shard-size', default='5GB', metavar='SIZE',
                      help='one safetensors file up to this size, then shards + index (5GB)')
  export.add_argument('--max-positions', type=int, default=None, metavar='N',
                      help='max_position_embeddings in config.json (default: data.seq_len)')
  export.set_defaults(func=_cmd_export)
  submit = sub.add_parser('submit', help='run on a Cloud TPU slice or a SLURM GPU cluster',
                          description='submit --target tpu|slurm EXPERIMENT [key=value ...]: the '
                          'same run on a Cloud TPU slice or a SLURM GPU cluster.')
  submit.add_argument('experiment', nargs='?', help='as for run (not needed by --action create, '
                      'setup, stop, delete; optional for logs)')
  submit.add_argument('overrides', nargs='*', help='config overrides, e.g. train.steps=100')
  submit_options.add_options(submit, sweep=False)
  submit.set_defaults(func=_cmd_submit)
  _add_compile(sub)
  show = sub.add_parser('show', help='the resolved config, params, tokens, FLOPs, phases',
                        description='Print a run\'s resolved config (fields that differ from '
                        'the defaults marked *), its parameter counts, tokens and FLOPs per '
                        'step and its growth phases, without compiling or initialising it.')
  show.add_argument('experiment', help='as for run')
  show.add_argument('overrides', nargs='*', help='config overrides, e.g. model.d_model=512')
  show.set_defaults(func=_cmd_show)
  _add_prepare(sub)
  report = sub.add_parser('report', help='report.md, tables and plots of a run or sweep')
  report.add_argument('dir')
  report.add_argument('--baseline', default=None, metavar='RUN|KEY=V1,V2',
                      help='RUN: also tabulate the FLOPs each run (method, over seeds) needs '
                      'to reach this one\'s final val loss (growth studies); KEY=V1,V2: each '
                      'run\'s paired differences against the run that differs only in KEY '
                      '(e.g. optim.name=adamw,sgd)')
  report.set_defaults(func=_cmd_report)
  fit = sub.add_parser('fit', help='fit a scaling law to a sweep\'s finished runs',
                       description='Fit a scaling law to the finished runs under DIR; writes '
                       'DIR/fit_<law>.md and its plots (docs/scaling.md).')
  fit.add_argument('dir')
  fit.add_argument('--law', required=True, choices=LAWS)
  fit.add_argument('--method', default='none', metavar='M',
                   help="the runs' growth.method ('none', the default: from scratch); for "
                   "--law multiplier the growth method compared with scratch")
  fit.add_argument('--params', default=None, choices=['all', 'non_embedding'],
                   help='how N is counted (default: all, as Chinchilla; hparams: '
                   'non_embedding, as Step Law)')
  fit.add_argument('--predict', default=None, metavar='N=..,D=..|C=..',
                   help='also predict there, with an interval (chinchilla, hparams: N and D; '
                   'isoflop, frontier, multiplier: C)')
  fit.add_argument('--bootstrap', type=int, default=200, metavar='B',
                   help='bootstrap refits for the intervals (default 200)')
  fit.set_defaults(func=_cmd_fit)
  coord = sub.add_parser('coordcheck', help='the muP coordinate check over widths',
                         description='muP coordinate check: mean |activation| of every sublayer '
                         'vs width over the first steps; writes a plot and a slope table.')
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
  steplaw = sub.add_parser('steplaw', help='Step Law\'s lr and batch for N params, D tokens')
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
  platforms.skip_absent_tpu()   # before anything starts JAX's backends
  try:
    return args.func(args)
  except ConfigError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:   # a second Ctrl-C (the first one stops a run at a step boundary)
    print('interrupted', file=sys.stderr)
    return 128 + signal.SIGINT
