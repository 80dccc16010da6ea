"""`launch.py show EXPERIMENT [key=value ...]`: what a run would be, before it runs.

Prints the resolved config (every field by section; the fields that differ from the
dataclass defaults marked '*', with the default beside), the parameter counts, tokens
and FLOPs per step and the growth phases. Nothing is compiled or initialised: the counts
come from the parameter schema (an abstract trace of the model) and the FLOPs from the
one formula in jaxlab.models.flops, so they are the numbers the run itself logs."""
from __future__ import annotations

from jaxlab import config as config_lib
from jaxlab.config.types import Config
from jaxlab.growth import plan
from jaxlab.models.flops import flops_per_token
from jaxlab.optim.step_law import non_embedding_params
from jaxlab.rundir.layout import run_dir_of
from jaxlab.train.runnable import resolve

MARK = '*'


def text(value) -> str:
  """A config value as an override spells it (model.qk_norm=true, data.files=a,b)."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (tuple, list)):
    return ','.join(text(v) for v in value) or "''"
  if value == '':
    return "''"
  return str(value)


def changed(cfg: Config) -> dict[str, object]:
  """{dotted key: dataclass default} of every field where cfg differs from Config()."""
  defaults = config_lib.flatten(Config().to_dict())
  return {k: defaults[k] for k, v in config_lib.flatten(cfg.to_dict()).items()
          if v != defaults[k]}


def config_lines(cfg: Config) -> list[str]:
  """Every field, grouped by section (top-level fields first, under 'run')."""
  values = config_lib.flatten(cfg.to_dict())
  differs = changed(cfg)
  width = max(len(k.rpartition('.')[2]) for k in values)
  lines, section = [], None
  for key, value in values.items():
    group, _, name = key.rpartition('.')
    if group != section:
      section = group
      lines.append(f'{group or "run"}:')
    mark = MARK if key in differs else ' '
    line = f' {mark} {name:<{width}}  {text(value)}'
    if key in differs:
      line = f'{line:<{width + 24}}  (default {text(differs[key])})'
    lines.append(line)
  return lines


def _phase_lines(cfg: Config, phases: list[plan.Phase]) -> list[str]:
  tps = plan.tokens_per_step(cfg)
  rows = [('from step', 'event', 'model', 'params', 'non-embedding', 'seq_len',
           'FLOPs per step')]
  for p in phases:
    m = p.model
    rows.append((str(p.start_step), p.event or '-', plan.describe(m),
                 f'{plan.n_params(m):,}', f'{non_embedding_params(m):,}', str(p.length(cfg)),
                 f'{flops_per_token(m, p.length(cfg)) * tps:.4g}'))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return ['  ' + '  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def total_flops(cfg: Config, phases: list[plan.Phase]) -> float:
  """Training FLOPs of the whole run: each phase's FLOPs per step times its steps."""
  ends = [p.start_step for p in phases[1:]] + [cfg.train.steps]
  tps = plan.tokens_per_step(cfg)
  return sum((end - p.start_step) * flops_per_token(p.model, p.length(cfg)) * tps
             for p, end in zip(phases, ends))


def summary_lines(cfg: Config) -> list[str]:
  """Counts of the model (the target model, under growth), per step and per run."""
  phases = plan.phases(cfg)
  m, t = cfg.model, cfg.train
  tps = plan.tokens_per_step(cfg)
  last = phases[-1]
  g = cfg.growth
  method = '' if len(phases) == 1 else \
      f' (growth.{"seq_lens" if g.seq_lens else "method=" + g.method})'
  return [
      f'params: {plan.n_params(m):,} all; {non_embedding_params(m):,} without embedding '
      'and head',
      f'tokens per step: {tps:,} (train.batch_size {t.batch_size} x data.seq_len '
      f'{cfg.data.seq_len}); {t.steps * tps:,} in {t.steps} steps',
      f'FLOPs per step: {flops_per_token(last.model, last.length(cfg)) * tps:.4g} '
      f'({plan.describe(last.model)}); {total_flops(cfg, phases):.4g} for the run',
      f'phases: {len(phases)}{method}',
      *_phase_lines(cfg, phases)]


def show(experiment: str, overrides: list[str]) -> str:
  cfg = resolve(config_lib.load(experiment, overrides))
  summary = summary_lines(cfg)   # the growth plan's checks before anything prints
  head = (f'{experiment}: run directory {run_dir_of(cfg)}; {MARK} = differs from the '
          'default (in brackets)')
  return '\n'.join([head, *config_lines(cfg), '', *summary])


def main(args) -> int:
  print(show(args.experiment, args.overrides))
  return 0
