"""`launch.py grow --from hf:DIR ...`: grow a pretrained Hugging Face checkpoint in depth
into a new run directory that `launch.py run RUN` trains (continued pretraining).

  --method layers --layers 0-23,8-31   SOLAR 10.7B's depth up-scaling (Mistral-7B's 32
                                       layers: copy A without its last 8, copy B without
                                       its first 8); Yi-9B's middle-range duplication
                                       (--layers 0-27,12-27,28-31 style)
  --method zero --insert-every K       LLaMA-Pro: after every K blocks an identity copy
                                       (its attention-out and MLP-down zeroed: exactly the
                                       source function)
  --method stack | interleave | random --factor F   the in-run operators, on the checkpoint

The run's config is the experiment's (`--experiment`, default the Config defaults) with
the model replaced by the grown architecture, data.tokenizer = DIR when DIR holds a
tokenizer.json (unless set), and the overrides; model overrides that change the grown
architecture are refused. train.trainable=new is written out as the new layers
(layers[i,j,...]), since this run itself has no growth section. The directory holds
config.json, a checkpoint at step 0 (the grown params, a fresh optimizer state, the data
iterator), and a metrics.jsonl line {"event": "grow", "from_hf": DIR, ...} recording the
growth.
"""
from __future__ import annotations

import dataclasses
import pathlib
import shlex

import jax

from jaxlab import config as config_lib
from jaxlab import data as data_lib
from jaxlab import growth
from jaxlab.config import hf as hf_config
from jaxlab.config.types import Config, ConfigError
from jaxlab.growth import depth, plan
from jaxlab.interop import hf
from jaxlab.launch import outputs
from jaxlab.optim import trainable as trainable_lib
from jaxlab.parallel import make_mesh
from jaxlab.rundir.directory import growth_event
from jaxlab.train.program import build_program
from jaxlab.train.runnable import resolve
from jaxlab.train.state import init_state_from

METHODS = ('layers', 'zero', 'stack', 'interleave', 'random')


def _resolve_new(text: str, new: list[bool]) -> str:
  """train.trainable with 'new' spelled out as the new layers."""
  if not text or not any(i.new for i in trainable_lib.parse(text)):
    return text
  rows = [i for i, flag in enumerate(new) if flag]
  if not rows:
    raise ConfigError("train.trainable=new: this growth adds no layer (every target layer is "
                      'the first copy of a source layer)')
  items = [f'layers[{",".join(map(str, rows))}]' if i.new else i.text
           for i in trainable_lib.parse(text)]
  return ','.join(items)


def grown_config(hf_dir: pathlib.Path, out_dir: pathlib.Path, method: str,
                 layers: list[int] | None, factor: int, experiment: str | None,
                 overrides: list[str]):
  """(config of the grown run, source ModelConfig, layer map or None)."""
  if method not in METHODS:
    raise ConfigError(f'--method {method!r} cannot grow a Hugging Face checkpoint; allowed: '
                      f'{", ".join(METHODS)} (depth growth)')
  src = hf_config.model_config(hf_dir)
  n_dst = len(layers) if layers else src.n_layers * factor
  dst = dataclasses.replace(src, n_layers=n_dst)
  try:
    new = growth.new_layers(src, dst, method, layers)
  except ValueError as err:
    raise ConfigError(f'--method {method}: {err}') from None
  base = config_lib.load(experiment) if experiment else Config(name=out_dir.name)
  model = dataclasses.replace(base.model, init='',
                              **{f: getattr(dst, f) for f in hf_config.ARCH_FIELDS})
  data = base.data
  if data.tokenizer == 'byte' and (hf_dir / 'tokenizer.json').is_file():
    data = dataclasses.replace(data, tokenizer=str(hf_dir))
  cfg = dataclasses.replace(base, name=out_dir.name, model=model, data=data,
                            train=dataclasses.replace(base.train, workdir=str(out_dir.parent)))
  cfg = config_lib.apply_overrides(cfg, overrides)
  for field in hf_config.ARCH_FIELDS:
    if getattr(cfg.model, field) != getattr(model, field):
      raise ConfigError(f'model.{field}={getattr(cfg.model, field)!r} contradicts the grown '
                        f'checkpoint (model.{field}={getattr(model, field)!r}); drop the override')
  if cfg.model.init or cfg.growth.method != 'none':
    raise ConfigError('the grown run starts from the grown checkpoint: leave model.init and '
                      'growth.* unset')
  if cfg.model.parametrization != 'sp':
    raise ConfigError('a Hugging Face checkpoint computes the SP function; '
                      'model.parametrization must stay sp for the grown run')
  train = dataclasses.replace(cfg.train, trainable=_resolve_new(cfg.train.trainable, new))
  return resolve(dataclasses.replace(cfg, train=train)), src, new


def _command(source: str, out_dir: pathlib.Path, method: str, layers, factor: int,
             experiment: str | None, overrides: list[str]) -> str:
  """The grow, as the command that makes it (growth.source of the grown run)."""
  parts = ['launch.py', 'grow', '--from', source, '--method', method]
  parts += ['--layers', ','.join(map(str, layers))] if layers else ['--factor', str(factor)]
  parts += ['--experiment', experiment] if experiment else []
  return shlex.join(parts + ['--out', str(out_dir), *overrides])


def grow_from_hf(source: str, out_dir: str | pathlib.Path, *, method: str,
                 layers: list[int] | None = None, factor: int = 4, experiment: str | None = None,
                 overrides: list[str] = (), overwrite: bool = False) -> Config:
  """Writes the grown run directory `out_dir`, whole or not at all; returns its config."""
  hf_dir = hf_config.init_dir(source)
  out_dir = pathlib.Path(out_dir)
  outputs.check_out(out_dir, option='--out', overwrite=overwrite, sources=[hf_dir])
  cfg, src, new = grown_config(hf_dir, out_dir, method, layers, factor, experiment,
                               list(overrides))
  cfg = dataclasses.replace(cfg, growth=dataclasses.replace(cfg.growth, source=_command(
      source, out_dir, method, layers, factor, experiment, list(overrides))))
  outputs.external_checkpoints(cfg, out_dir)
  try:
    tokenizer = data_lib.make_tokenizer(cfg.data)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  if tokenizer.vocab_size > cfg.model.vocab_size:
    raise ConfigError(f'data.tokenizer={cfg.data.tokenizer!r} has {tokenizer.vocab_size} tokens, '
                      f'more than the checkpoint\'s vocab_size={cfg.model.vocab_size}')
  mesh = make_mesh(cfg.mesh)
  program = build_program(cfg, mesh)
  src_params = hf.load(hf_dir, mesh=mesh)[1]
  rng = jax.random.key(cfg.train.seed)
  grown = jax.jit(lambda p: growth.grow(p, src, cfg.model, method, layers=layers, rng=rng),
                  out_shardings=program.shardings.params)(src_params)
  del src_params
  state = init_state_from(grown, program.tx, program.shardings)
  batch = cfg.train.batch_size // jax.process_count()
  proc = dict(process_index=jax.process_index(), process_count=jax.process_count())
  try:
    iterator = data_lib.make_train_iterator(cfg.data, tokenizer, batch_size=batch, **proc)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  event = growth_event(
      event='grow', step=0, tokens=0, flops=0.0, method=method,
      optimizer='reset', src=plan.describe(src), dst=plan.describe(cfg.model),
      from_hf=str(hf_dir),
      layers=depth.layer_map(plan.depth_method_for(method), src.n_layers, cfg.model.n_layers,
                             layers),
      new_layers=[i for i, flag in enumerate(new) if flag])
  outputs.write_grown_run(out_dir, cfg, [event], 0, state, iterator, {'tokens': 0, 'flops': 0.0},
                          overwrite=overwrite, sources=[hf_dir],
                          writer=jax.process_index() == 0)
  return cfg
