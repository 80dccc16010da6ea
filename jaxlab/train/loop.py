"""The training loop: config -> mesh, model, optimizer -> sharded state -> steps, with
periodic eval, metrics, checkpoints, resume, preemption and divergence handling.

Rerunning the same run directory resumes from its newest readable checkpoint; the
metrics logged after that checkpoint are dropped and logged again, so metrics.jsonl
always reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import math
import pathlib
import signal
import sys
import time

import jax

from jaxlab import data as data_lib
from jaxlab import growth
from jaxlab import metrics as metrics_lib
from jaxlab.checkpoint import Checkpointer, checkpoint_dir
from jaxlab.config_types import Config, ConfigError
from jaxlab.config import from_dict, validate
from jaxlab.diagnostics.spectral import top_singular_values
from jaxlab.parallel import initialize_distributed, make_mesh
from jaxlab.train.program import Program, build_program

# Keys that may change when a run directory is resumed (they do not change the result).
# Every mesh.* key may change too: checkpoints restore onto any mesh (up to the order of
# floating-point reductions the result is the same).
RESUMABLE_CHANGES = ('train.log_every', 'train.eval_every', 'train.checkpoint_every',
                     'train.keep_checkpoints', 'train.async_checkpoint', 'train.workdir',
                     'train.spectral_every', 'train.weight_stats')
RESUMABLE_PREFIXES = ('mesh.',)


# Logged when the step computes them (weight diagnostics; proj_fired under AdamP / SGDP).
EXTRA_METRICS = ('prenorm_w_norm', 'prenorm_eff_step', 'proj_fired')


class Diverged(RuntimeError):
  """The loss became NaN or Inf."""


class Preempted(RuntimeError):
  """SIGTERM / SIGINT arrived; a checkpoint was saved."""

  def __init__(self, signum: int, step: int):
    super().__init__(f'stopped by {signal.Signals(signum).name} at step {step}; '
                     'checkpoint saved, rerun the same command to resume')
    self.signum = signum
    self.step = step


def run_dir_of(cfg: Config) -> pathlib.Path:
  return pathlib.Path(cfg.train.workdir) / cfg.name


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = v
  return out


def _check_same_run(run_dir: pathlib.Path, cfg: Config):
  path = run_dir / 'config.json'
  if not path.exists():
    return
  try:
    old = _flatten(from_dict(json.loads(path.read_text())).to_dict())
  except (ConfigError, json.JSONDecodeError, TypeError) as err:
    raise ConfigError(f'{path} cannot be read as a jaxlab config ({err}); use another name=') \
        from None
  new = _flatten(cfg.to_dict())
  diff = [f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
          and not k.startswith(RESUMABLE_PREFIXES)]
  if diff:
    raise ConfigError(f'{run_dir} holds a run with a different config ({"; ".join(diff)}); '
                      'resuming it would mix two runs. Pick another name=... or remove the '
                      'directory')


class _StopFlag:
  """Turns SIGTERM / SIGINT into a flag the loop checks after each step; a second
  SIGINT interrupts at once."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    print(f'\n{signal.Signals(signum).name} received: saving a checkpoint after this step',
          file=sys.stderr, flush=True)

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _preflight(cfg: Config, tokenizer) -> int:
  """Checks that need the environment (devices, tokenizer) but no compile; returns
  this process's share of the batch and the mesh."""
  if tokenizer.vocab_size > cfg.model.vocab_size:
    raise ConfigError(f'model.vocab_size={cfg.model.vocab_size} is smaller than the '
                      f'tokenizer\'s vocabulary ({tokenizer.vocab_size}, data.tokenizer='
                      f'{cfg.data.tokenizer!r}); set model.vocab_size>={tokenizer.vocab_size}')
  mesh = make_mesh(cfg.mesh)
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  if cfg.train.batch_size % shards or cfg.train.batch_size % jax.process_count():
    raise ConfigError(f'train.batch_size={cfg.train.batch_size} must be divisible by the '
                      f'data-parallel size (data x fsdp axes of the mesh = {shards}) and by '
                      f'the number of processes ({jax.process_count()})')
  return cfg.train.batch_size // jax.process_count(), mesh


def _to_global(batch: dict, sharding) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _write_json(path: pathlib.Path, obj):
  if jax.process_index() == 0:
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(obj, indent=2) + '\n')
    tmp.replace(path)


def _growth_event(cfg: Config, old: Program, new: Program, step: int, tokens: int,
                  flops: float, val_before, val_after, n_params: int) -> dict:
  phase = new.phases[new.phase]
  return {'event': phase.event, 'step': step, 'tokens': tokens, 'flops': flops,
          'method': cfg.growth.method, 'optimizer': cfg.growth.optimizer,
          'from': growth.plan.describe(old.model.cfg),
          'to': growth.plan.describe(new.model.cfg),
          'n_params': n_params, 'val_loss_before': val_before, 'val_loss_after': val_after}


def train(cfg: Config) -> dict:
  """Runs (or resumes) one training run; returns its summary. Raises Diverged or
  Preempted after writing the summary."""
  validate(cfg)
  initialize_distributed(cfg.mesh)  # before anything touches a device
  t_start = time.time()
  tc = cfg.train
  try:
    tokenizer = data_lib.make_tokenizer(cfg.data)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  local_batch, mesh = _preflight(cfg, tokenizer)
  run_dir = run_dir_of(cfg)
  run_dir.mkdir(parents=True, exist_ok=True)
  _check_same_run(run_dir, cfg)
  _write_json(run_dir / 'config.json', cfg.to_dict())

  phases = growth.phases(cfg)
  programs: dict[int, Program] = {}

  def program_at(step: int) -> Program:
    k = growth.phase_index(phases, step)
    if k not in programs:
      programs[k] = build_program(cfg, mesh, k, phases)
    return programs[k]

  program = program_at(0)
  for k in range(1, len(phases)):  # growth operators check their inputs (shapes only)
    try:
      jax.eval_shape(program_at(phases[k].start_step).enter,
                     program_at(phases[k - 1].start_step).abstract_state)
    except ValueError as err:
      raise ConfigError(f'growth.method={cfg.growth.method!r} cannot go from '
                        f'{growth.plan.describe(phases[k - 1].model)} to '
                        f'{growth.plan.describe(phases[k].model)}: {err}') from None
  in_sharding = program.batch_sharding
  seq_len = cfg.data.seq_len

  proc = dict(process_index=jax.process_index(), process_count=jax.process_count())
  try:
    iterator = data_lib.make_train_iterator(cfg.data, tokenizer, batch_size=local_batch, **proc)
    val_host = data_lib.eval_batches(cfg.data, tokenizer, batch_size=local_batch,
                                     n_batches=tc.eval_batches, **proc) if tc.eval_batches else []
  except ValueError as err:  # the data pipeline names the config key at fault
    raise ConfigError(str(err)) from None
  val_batches = [_to_global(b, in_sharding) for b in val_host]
  note = data_lib.eval_cost_note(len(val_host), tc.eval_every, tc.steps)
  if note and tc.eval_batches == 'all':
    print(note, flush=True)

  ckpt = Checkpointer(checkpoint_dir(cfg, run_dir), tc.keep_checkpoints, tc.async_checkpoint)
  restored = ckpt.restore_latest(lambda s: program_at(s).abstract_state, iterator)
  if restored is None:
    state = program.init_state()
    step, tokens, flops = 0, 0, 0.0
  else:
    state, step = restored.state, restored.step
    tokens, flops = int(restored.meta['tokens']), float(restored.meta['flops'])
    program = program_at(step)
    print(f'resuming {run_dir} from step {step}', flush=True)

  n_params = metrics_lib.count_params(state.params)
  fpt = metrics_lib.flops_per_token(program.model.cfg, seq_len)
  tokens_per_step = tc.batch_size * seq_len
  device_kind = jax.devices()[0].device_kind
  summary = {'name': cfg.name, 'n_params': n_params, 'flops_per_token': fpt,
             'device_kind': device_kind, 'n_devices': jax.device_count()}
  if step >= tc.steps:
    ckpt.close()
    old = run_dir / 'summary.json'
    print(f'{run_dir} already finished at step {step}', flush=True)
    return json.loads(old.read_text()) if old.exists() else summary

  writer = metrics_lib.MetricsWriter(run_dir, tc.steps, resume_step=step,
                                     enabled=jax.process_index() == 0)
  throughput = metrics_lib.Throughput()
  pending: list[tuple[int, dict]] = []
  spectral = jax.jit(top_singular_values, static_argnums=1)   # retraces at growth
  last_loss = last_val = None
  val_tokens = None   # target tokens per evaluation (the same at every one)
  last_rate = None
  session_start, session_step0 = time.perf_counter(), step

  def evaluate() -> float:
    nonlocal val_tokens
    total = count = 0.0
    for batch in val_batches:
      s, c = jax.device_get(program.eval_step(state.params, batch, state.step))
      total, count = total + float(s), count + float(c)
    val_tokens = int(count)
    return total / max(count, 1.0)

  def finish(status: str, **extra) -> dict:
    summary.update(status=status, step=step, tokens=tokens, flops=flops,
                   final_loss=last_loss, final_val_loss=last_val, val_tokens=val_tokens,
                   tokens_per_sec=last_rate,
                   wall_time_sec=time.time() - t_start, **extra)
    _write_json(run_dir / 'summary.json', summary)
    return summary

  try:
    with _StopFlag() as stop:
      while step < tc.steps:
        batch = _to_global(next(iterator), in_sharding)
        state, step_metrics = program.train_step(state, batch)
        step += 1
        tokens += tokens_per_step
        flops += tokens_per_step * fpt
        pending.append((step, step_metrics))

        last = step == tc.steps
        stopping = stop.signum is not None  # read once: a signal may land mid-iteration
        growing = growth.phase_index(phases, step) != program.phase
        do_eval = last or growing or (tc.eval_every and step % tc.eval_every == 0)
        do_ckpt = last or stopping or growing or (
            tc.checkpoint_every and step % tc.checkpoint_every == 0)
        # A spectral step is a log step: its sigma_max values join that step's record.
        do_spectral = tc.spectral_every and (last or step % tc.spectral_every == 0)
        do_log = last or do_eval or do_spectral or step % tc.log_every == 0
        if not (do_log or do_ckpt):
          continue

        # Bring the losses since the last sync to the host: every step is checked for
        # NaN / Inf before anything is logged or saved.
        fetched = jax.device_get(pending)
        pending = []
        for s, m in fetched:
          bad = [k for k in ('loss', 'param_norm') if not math.isfinite(float(m[k]))]
          if bad:
            good = ckpt.all_steps()
            finish('diverged', diverged_at_step=s, last_good_checkpoint=good[-1] if good else None)
            what = (f'loss became {float(m["loss"])}' if 'loss' in bad
                    else 'parameters became non-finite')
            raise Diverged(
                f'{what} at step {s}; the run is stopped. Last good checkpoint: '
                f'{"step " + str(good[-1]) if good else "none"} (kept). Rerunning resumes '
                'from it; lower optim.lr or raise optim.warmup_steps first')
        last_loss = float(fetched[-1][1]['loss'])

        record = None
        if do_log:
          rate = throughput.update(tokens)
          last_rate = rate if rate is not None else last_rate
          m = fetched[-1][1]
          record = {'step': step, 'tokens': tokens, 'flops': flops, 'loss': last_loss,
                    'lr': float(m['lr']), 'grad_norm': float(m['grad_norm']),
                    'param_norm': float(m['param_norm']),
                    **{k: float(m[k]) for k in EXTRA_METRICS if k in m},
                    'tokens_per_sec': rate,
                    'mfu': None if rate is None else metrics_lib.mfu(
                        rate * fpt, device_kind, jax.device_count()),
                    'time': time.time() - t_start}
        if do_eval and val_batches:
          t0 = time.perf_counter()
          last_val = evaluate()
          record['val_loss'] = last_val
          record['val_tokens'] = val_tokens
          throughput.exclude(time.perf_counter() - t0)
        if do_spectral:
          t0 = time.perf_counter()
          sigmas = spectral(state.params, program.model.cfg)
          record.update({k: float(v) for k, v in jax.device_get(sigmas).items()})
          throughput.exclude(time.perf_counter() - t0)
        if record is not None:
          done = step - session_step0
          eta = (time.perf_counter() - session_start) / done * (tc.steps - step)
          writer.write(record, eta_sec=eta)
        if growing:
          old = program
          program = program_at(step)
          state = program.enter(state)
          fpt = metrics_lib.flops_per_token(program.model.cfg, seq_len)
          n_params = metrics_lib.count_params(state.params)
          event = _growth_event(cfg, old, program, step, tokens, flops, last_val,
                                evaluate() if val_batches else None, n_params)
          last_val = event['val_loss_after']
          writer.write_event(event)
          print(f"growth at step {step}: {event['from']} -> {event['to']} ({event['event']}); "
                f"val loss {event['val_loss_before']} -> {event['val_loss_after']}", flush=True)
          summary.update(n_params=n_params, flops_per_token=fpt)
          throughput.restart()
        if do_ckpt:
          t0 = time.perf_counter()
          ckpt.save(step, state, iterator, {'tokens': tokens, 'flops': flops})
          throughput.exclude(time.perf_counter() - t0)
        if stopping and not last:
          ckpt.wait()
          finish('preempted', signal=signal.Signals(stop.signum).name)
          raise Preempted(stop.signum, step)
    ckpt.wait()
    return finish('completed')
  finally:
    writer.close()
    ckpt.close()
