"""The one prepared GPU check: everything a GPU must show, in one command that fits a
short lease and can be re-run after a fix.

    python bench/device_check.py --out DIR [--cpu] [--budget SECONDS]

Sections (each time-boxed; a table is printed, and DIR/device_check.md rewritten, as
soon as it exists):
  1. every attention backend (pallas via Triton, cudnn, tokamax, xla) compiled, against
     the float32 reference: out and dq / dk / dv at shapes with GQA, packed documents
     (segment ids) and a ragged length (bench/device_attention.py);
  2. a reduced bench_attention grid: T 2k and 8k, head_dim 128, causal, MHA 16:16 and
     GQA 16:2, bfloat16, forward and forward+backward TFLOP/s per backend;
  3. the train step of a ~1B model (d 2048, 20 layers, 16 heads, seq 2048, batch 8,
     bfloat16, model.attention=auto) under each remat policy: tokens/s, MFU, compile
     time, peak memory;
  4. STEPS steps of the demo model (model.attention=auto) on the device against a CPU run
     of the same config (`launch.py run` with JAX_PLATFORMS=cpu, started at the
     beginning so that it runs alongside sections 1-3): the per-step losses must agree
     within LOSS_TOL. The device side runs under jax.default_matmul_precision('highest')
     so that float32 means float32 (XLA and the fused kernels would otherwise use TF32
     on the GPU); the check is about wrong results, not about TF32.

Time: sections get at most 90 + 100 + 150 + 60 s on a GPU; a section stops starting new
work when its box is spent, and a watchdog ends the process (exit 0, partial tables
kept, a note saying so) at --budget seconds (default 450: 7.5 minutes, inside the
8 a lease allows, compiles included). Exit status: 0 when every check that ran passed,
1 when a check failed (FAIL in a table), 2 for bad arguments.

--cpu runs the same sections on tiny shapes on the CPU (Pallas in interpret mode,
tokamax's xla implementation, cuDNN reported unsupported) in well under a minute: what
CI runs (tests/test_device_check.py). There the device side of section 4 uses
model.attention=tokamax, so that the comparison is between two code paths.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Seconds per section. On the CPU (CI, a shared machine) the boxes only guard against a
# hang: the work is sized to take seconds; tests/test_device_check.py checks the boxes.
SECTION_S = {'gpu': (90, 100, 150, 60), 'cpu': (300, 300, 300, 300)}
# Section 4's tolerance on |loss_device - loss_cpu| at every step (float32 both sides).
# Measured on the CPU: the same demo run with model.attention=tokamax against xla (the same
# math, another reduction order) drifts by at most 3.1e-5 over 100 steps; a GPU's GEMMs,
# exp and reductions differ from the CPU's by the same float32 rounding, amplified by
# training the same way. 1e-3 is 30x that, and 1000x below the loss differences a wrong
# mask or a dropped document boundary makes (those move the loss by 1e-1 and more).
LOSS_TOL = 1e-3


@dataclasses.dataclass(frozen=True)
class Shapes:
  check: tuple          # device_attention.Case for section 1
  bench: dict           # section 2's grid
  step: dict            # section 3
  demo: dict            # section 4


def shapes(cpu: bool) -> Shapes:
  from device_attention import Case
  if cpu:
    return Shapes(
        check=(Case('GQA 2:1 f32, packed, ragged T=40', 2, 40, 4, 2, 16, 'float32', packed=True),),
        bench=dict(seqs=(64,), heads=((4, 1),), K=16, tokens=128, dtype='float32',
                   backends=('cudnn', 'tokamax', 'xla')),   # interpret-mode Pallas: untimed
        step=dict(d=32, layers=1, heads=2, seq=32, batch=2, dtype='float32', steps=2,
                  remats=('none', 'full')),
        demo=dict(experiment='tiny', steps=4, attention='tokamax'))
  return Shapes(
      check=(Case('MHA 8:8 bf16, K 128', 2, 1024, 8, 8, 128, 'bfloat16'),
             Case('GQA 16:2 bf16, K 128, packed', 2, 1024, 16, 2, 128, 'bfloat16', packed=True),
             Case('GQA 8:2 bf16, K 64, packed, ragged T=1000', 2, 1000, 8, 2, 64, 'bfloat16',
                  packed=True),
             Case('MHA 4:4 f32, K 64, packed', 2, 512, 4, 4, 64, 'float32', packed=True)),
      bench=dict(seqs=(2048, 8192), heads=((16, 16), (16, 2)), K=128, tokens=16384,
                 dtype='bfloat16'),
      step=dict(d=2048, layers=20, heads=16, seq=2048, batch=8, dtype='bfloat16', steps=10,
                remats=('full', 'save_dots', 'none')),   # the likeliest to fit first
      demo=dict(experiment='demo', steps=100, attention='auto'))


class Report:
  """Markdown under --out: header, then tables in order; rewritten after each change."""

  def __init__(self, out: pathlib.Path, header: list[str]):
    self.path, self.parts, self.failed = out / 'device_check.md', ['\n'.join(header)], False
    self.lock = threading.Lock()
    self.write()

  def table(self, title: str, columns: list[str], rows: list[list], notes=()):
    self.failed |= any('FAIL' in str(c) for r in rows for c in r)
    lines = [f'## {title}', '', '| ' + ' | '.join(columns) + ' |',
             '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    self.add('\n'.join(lines + [''] + [f'- {n}' for n in notes]))

  def add(self, text: str):
    with self.lock:
      self.parts.append(text)
      print('\n' + text, flush=True)
      self.write()

  def write(self):
    self.path.write_text('\n\n'.join(self.parts) + '\n')


class Box:
  """A section's time box, inside the global deadline (time.monotonic seconds)."""

  def __init__(self, seconds: float, deadline: float):
    self.end = min(time.monotonic() + seconds, deadline)

  def open(self) -> bool:
    return time.monotonic() < self.end


def log(msg: str):
  print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- section 3

def step_rows(spec: dict, box: Box) -> list[list]:
  import jax
  import jax.numpy as jnp
  from jaxlab.config import (Config, DataConfig, ModelConfig, TrainConfig, validate)
  from jaxlab.kernels.dispatch import Call, choose
  from jaxlab.kernels.target import target_device
  from jaxlab.models.flops import count_params, flops_per_token, mfu
  from jaxlab.parallel import make_mesh
  from jaxlab.train.program import build_program
  rows, dev = [], jax.devices()[0]
  for remat in spec['remats']:
    if not box.open():
      rows.append([remat, '', '', '', '', '', '', 'skipped: time box'])
      continue
    cfg = validate(Config(
        name='step', model=ModelConfig(d_model=spec['d'], n_layers=spec['layers'],
                                       n_heads=spec['heads'], dtype=spec['dtype'], remat=remat,
                                       attention='auto'),
        data=DataConfig(seq_len=spec['seq']),
        train=TrainConfig(steps=1000, batch_size=spec['batch'], eval_every=0,
                          checkpoint_every=0)))
    try:
      program = build_program(cfg, make_mesh(cfg.mesh))
      state = program.init_state()
      n_params = count_params(state.params)
      tokens = jax.random.randint(jax.random.key(1), (spec['batch'], spec['seq'] + 1), 0,
                                  cfg.model.vocab_size, jnp.int32)
      batch = {'tokens': tokens, 'segment_ids': jnp.ones_like(tokens)}
      t0 = time.perf_counter()
      state, m = program.train_step(state, batch)
      jax.block_until_ready(m)
      compile_s = time.perf_counter() - t0
      state, m = program.train_step(state, batch)
      jax.block_until_ready(m)
      t0 = time.perf_counter()
      for _ in range(spec['steps']):
        state, m = program.train_step(state, batch)
      jax.block_until_ready(m)
      rate = spec['steps'] * spec['batch'] * spec['seq'] / (time.perf_counter() - t0)
      util = mfu(rate * flops_per_token(cfg.model, spec['seq']), dev.device_kind, 1)
      peak = (dev.memory_stats() or {}).get('peak_bytes_in_use')
      head = program.model.cfg
      q = jax.ShapeDtypeStruct((spec['batch'], spec['seq'], head.n_heads, head.dim_per_head),
                               jnp.dtype(spec['dtype']))
      k = jax.ShapeDtypeStruct((spec['batch'], spec['seq'], head.kv_heads, head.dim_per_head),
                               jnp.dtype(spec['dtype']))
      impl, _ = choose(Call(q, k, True, batch['segment_ids'][:, 1:],
                                           *target_device()))
      rows.append([remat, f'{n_params / 1e9:.2f}B', impl, f'{rate:,.0f}',
                   '-' if util is None else f'{100 * util:.1f}%', f'{compile_s:.0f}',
                   '-' if peak is None else f'{peak / 2**30:.1f}', f'loss {float(m["loss"]):.3f}'])
    except Exception as err:  # noqa: BLE001 -- out of memory at one remat is a result
      from device_attention import short
      rows.append([remat, '', '', '', '', '', '', f'error: {short(err)}'])
    finally:
      program = state = None
      gc.collect()
    log(f'[3] remat {remat}: {rows[-1]}')
  return rows


# ------------------------------------------------------------------------- section 4

def demo_overrides(spec: dict, workdir: pathlib.Path) -> list[str]:
  return [f'train.steps={spec["steps"]}', 'train.log_every=1', 'train.eval_every=0',
          'train.eval_batches=0', 'train.checkpoint_every=0', f'train.workdir={workdir}',
          'mesh.distributed=off', 'name=s4']


def start_reference(spec: dict, out: pathlib.Path, cpu: bool = False) -> subprocess.Popen:
  """`launch.py run` of the demo config on the CPU, in the background: niced, and on a
  host with 8+ cores kept to the last quarter of them, so that the device process
  (whose compiles are CPU work) keeps the rest. With `cpu` (--cpu: both runs are CPU runs)
  it keeps this process's XLA_FLAGS (the tests' fast-compile set) and is not niced: on a
  busy 2-core machine a niced reference waited minutes for its turn."""
  env = {k: v for k, v in os.environ.items() if cpu or k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
  argv = [sys.executable, str(ROOT / 'launch.py'), 'run', spec['experiment'],
          *demo_overrides(spec, out / 'section4_cpu'), 'model.attention=xla']
  log_file = open(out / 'section4_cpu.log', 'w')
  proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
  # Set from here, not in a preexec_fn: forking a process that already runs JAX's threads
  # and then running Python in the child can deadlock. The child is still starting
  # Python; the threads it makes later inherit both settings.
  if not cpu:
    os.setpriority(os.PRIO_PROCESS, proc.pid, 10)
  cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else []
  if len(cpus) >= 8:
    os.sched_setaffinity(proc.pid, cpus[-len(cpus) // 4:])
  return proc


def losses(run_dir: pathlib.Path) -> dict[int, float]:
  path = run_dir / 's4' / 'metrics.jsonl'
  if not path.exists():
    return {}
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  return {r['step']: r['loss'] for r in rows if 'loss' in r and 'step' in r}


def demo_rows(spec: dict, out: pathlib.Path, reference: subprocess.Popen, box: Box):
  import jax
  from jaxlab import config as config_lib
  from jaxlab.train import train
  cfg = config_lib.load(spec['experiment'], demo_overrides(spec, out / 'section4_device')
                        + [f'model.attention={spec["attention"]}'])
  with open(out / 'section4_device.log', 'w') as f, contextlib.redirect_stdout(f), \
      jax.default_matmul_precision('highest'):
    train(cfg)
  while reference.poll() is None and box.open():
    time.sleep(0.5)
  if reference.poll() is None:
    return [], f'the CPU reference run did not finish inside the time box (log: {out}/section4_cpu.log)'
  device, cpu = losses(out / 'section4_device'), losses(out / 'section4_cpu')
  if reference.returncode != 0 or not cpu:
    return [], f'the CPU reference run failed (exit {reference.returncode}; see section4_cpu.log)'
  steps = sorted(set(device) & set(cpu))
  diffs = [abs(device[s] - cpu[s]) for s in steps]
  worst = max(range(len(steps)), key=lambda i: diffs[i])
  ok = len(steps) == spec['steps'] and diffs[worst] <= LOSS_TOL
  row = [spec['experiment'], f'{spec["attention"]} / xla', len(steps),
         f'{device[steps[0]]:.4f} / {cpu[steps[0]]:.4f}',
         f'{device[steps[-1]]:.4f} / {cpu[steps[-1]]:.4f}',
         f'{diffs[worst]:.1e} (step {steps[worst]})', f'{LOSS_TOL:g}', 'ok' if ok else 'FAIL']
  return [row], ''


# ------------------------------------------------------------------------------ main

def main(argv=None, hard_deadline: bool = True) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='directory for the markdown tables')
  parser.add_argument('--cpu', action='store_true', help='tiny shapes on the CPU (CI)')
  parser.add_argument('--budget', type=float, default=None,
                      help='seconds before the watchdog stops (default 450; 1200 with --cpu)')
  args = parser.parse_args(argv)
  start = time.monotonic()
  budget = args.budget or (1200.0 if args.cpu else 450.0)
  deadline = start + budget
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  if args.cpu:
    os.environ['JAX_PLATFORMS'] = 'cpu'
  else:
    from jaxlab.launch import gpu_flags   # the flags a `launch.py run` on this GPU would use
    gpu_flags.apply_and_log()
    # The lease is this process's alone: let XLA take 90% of the GPU (JAX's default is
    # 75%), so section 3's remat=none row has a chance to fit on an 80 GB H100.
    os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.9')
  sys.path.insert(0, str(ROOT / 'bench'))
  sys.path.insert(0, str(ROOT))
  spec = shapes(args.cpu)
  reference = start_reference(spec.demo, out, args.cpu)   # overlaps sections 1-3

  import jax
  import device_attention as attn
  from jaxlab.kernels import tokamax_attention as tk
  dev = jax.devices()[0]
  version = __import__('tokamax').__version__ if tk.installed() else 'not installed'
  report = Report(out, [
      '# jaxlab device check', '',
      f'- date: {datetime.datetime.now().astimezone().isoformat(timespec="seconds")}',
      f'- device: {dev.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s)); '
      f'jax {jax.__version__}, tokamax {version}',
      f'- XLA_FLAGS: `{os.environ.get("XLA_FLAGS", "")}`; XLA_PYTHON_CLIENT_MEM_FRACTION '
      f'{os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "default")}',
      f'- command: `python {" ".join(sys.argv if argv is None else ["device_check.py", *argv])}`',
      f'- budget {budget:.0f} s; section boxes {SECTION_S["cpu" if args.cpu else "gpu"]} s'])
  if hard_deadline:
    def stop():
      report.add(f'**Stopped by the watchdog at {budget:.0f} s**: the tables above are '
                 'partial; sections after them did not run.')
      reference.kill()
      os._exit(1 if report.failed else 0)
    watchdog = threading.Timer(max(deadline - time.monotonic(), 0), stop)
    watchdog.daemon = True
    watchdog.start()
  boxes = SECTION_S['cpu' if args.cpu else 'gpu']

  def section(i, title, columns, body, notes=()):
    t0, c0 = time.monotonic(), time.process_time()
    try:
      rows, extra = body(Box(boxes[i], deadline))
    except Exception as err:  # noqa: BLE001 -- one broken section must not hide the rest
      rows, extra = [], f'FAIL: the section stopped: {attn.short(err)}'
    notes = [*notes, *([extra] if extra else []),
             f'section time {time.monotonic() - t0:.0f} s (this process: '
             f'{time.process_time() - c0:.0f} CPU s)']
    report.table(title, columns, rows, notes)

  section(0, '1. Attention backends against the float32 reference (max |error| / max |ref|)',
          ['case', 'backend', 'out', 'dq', 'dk', 'dv', 'result'],
          lambda box: (attn.check(spec.check, box, log), ''),
          [f'tolerance {attn.TOL:g} (about 5 bfloat16 ulps; see bench/device_attention.py)'])
  section(1, '2. Attention speed (causal, TFLOP/s; FlashAttention-2 FLOP convention)',
          ['T', 'B', 'heads', 'backend', 'fwd ms', 'fwd TFLOP/s', 'f+b ms', 'f+b TFLOP/s',
           'note'], lambda box: (attn.bench(spec.bench, box, log), ''))
  s = spec.step
  section(2, f'3. Train step, d {s["d"]} x {s["layers"]} layers, seq {s["seq"]} x batch '
          f'{s["batch"]}, {s["dtype"]}, model.attention=auto',
          ['remat', 'params', 'attention', 'tokens/s', 'MFU', 'compile s', 'peak GiB', 'note'],
          lambda box: (step_rows(s, box), ''),
          [f'{s["steps"]} timed steps after compile + 1 warm-up; MFU against the dense bf16 '
           'peak (jaxlab.models.flops)'])
  section(3, f'4. {spec.demo["steps"]} steps of `{spec.demo["experiment"]}` on the device vs '
          'the CPU (per-step loss)',
          ['experiment', 'attention (device / cpu)', 'steps', 'first loss', 'last loss',
           'max |diff|', 'tolerance', 'result'],
          lambda box: demo_rows(spec.demo, out, reference, box),
          [f'tolerance {LOSS_TOL:g}: see LOSS_TOL in bench/device_check.py'])
  if reference.poll() is None:
    reference.kill()
  report.add(f'Total {time.monotonic() - start:.0f} s; '
             + ('a check FAILED' if report.failed else 'every check that ran passed'))
  return 1 if report.failed else 0


if __name__ == '__main__':
  sys.exit(main())
