"""TPU memory by context size (README, "Long context", *TPU memory by context*): the ~1B
model (experiments/llama_1b.py) compiled for one 16-chip v5p slice (tpu:v5p-32, 2x2x4) at
T = 32k, 128k and 512k with the sequence split over mesh.context = 1, 2, 4, 8, 16 chips.

  python bench/bench_context.py [--seq-lens 32768,131072,524288] [--contexts 1,2,4,8,16]
      [--remats save_dots,full] [--attention auto] [--target tpu:v5p-32] [--out FILE]

Every row has one sequence's T / c tokens on each chip: mesh data=1, fsdp = chips / c,
context = c, train.batch_size = chips / c sequences; no eval step (train.eval_batches=0).
Per remat policy, the train step is compiled as `launch.py compile` compiles it
(jaxlab.aot.check.check_phase on the run's mesh over the target's devices), each compile
in a child process (libtpu's compiler for a 1B model at 512k can hold several GiB of host
memory, and a crash then costs one cell, not the table). Columns, per chip:
  state     the step's arguments: params, AdamW moments (sharded over fsdp only, so they
            grow as fsdp = chips / c shrinks) and the batch;
  HBM       compiled.memory_analysis(): arguments + outputs - donated + temporaries + code,
            with temporaries in brackets; '>=' when the compiler refused the program
            (RESOURCE_EXHAUSTED: it gives what it needed, a lower bound);
  attention the temporaries of one attention sublayer's forward + backward (the model's own
            Attention module: projections, RoPE'd q / k, the backend the model picks for this
            mesh -- ring attention when c > 1 -- and their gradients) compiled alone on the
            same mesh at the same global shape; its input, RoPE tables and params are
            arguments, not counted. The step recomputes and differentiates one layer at a
            time, so this is the attention working set the step's peak holds once.
  kernel    what the compiled step runs for attention: splash / pallas flash (Mosaic custom
            calls found in its HLO) or xla (einsums).
`launch.py compile` additionally requires train.batch_size to be a multiple of the hosts
(4 on v5p-32; the data loader gives each host whole sequences), which c = 8 and 16 (batch
2 and 1) are not: those rows are compiled on the same mesh without that check and are
marked so.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from jaxlab import aot  # noqa: E402
from jaxlab import config as config_lib  # noqa: E402
from jaxlab.aot.targets import GIB, parse_target  # noqa: E402
from jaxlab.config.types import ConfigError  # noqa: E402

SEQ_LENS = (32768, 131072, 524288)
CONTEXTS = (1, 2, 4, 8, 16)
REMATS = ('save_dots', 'full')
TARGET = 'tpu:v5p-32'
EXPERIMENT = 'llama_1b'


def overrides(seq_len: int, context: int, remat: str, attention: str, chips: int) -> list[str]:
  if chips % context:
    raise ConfigError(f'--contexts: {context} does not divide the {chips} chips of the target')
  per = chips // context
  return [f'data.seq_len={seq_len}', 'mesh.data=1', f'mesh.fsdp={per}',
          f'mesh.context={context}', f'train.batch_size={per}', f'model.remat={remat}',
          f'model.attention={attention}', 'train.eval_batches=0']


def _mesh(cfg, target):
  """(mesh, note): the run's mesh as `launch.py compile` builds it; when only its
  batch-per-host check refuses, the same mesh without it, and a note saying so."""
  from jaxlab.aot import check, targets
  from jaxlab.parallel import make_mesh
  try:
    return check.target_mesh(cfg, target), None
  except ConfigError as err:
    if 'number of hosts' not in str(err):
      raise
  return (make_mesh(cfg.mesh, devices=targets.devices(target)),
          f'batch {cfg.train.batch_size} < {target.hosts} hosts: `launch.py compile` refuses '
          'it (whole sequences per host); compiled without that check')


def _kernel(compiled) -> str:
  text = compiled.as_text()
  if 'splash_' in text:
    return 'splash'
  if 'flash_attention' in text:
    return 'pallas'
  return 'xla'


def attention_alone(cfg, mesh) -> dict:
  """Per-chip memory of one attention sublayer's forward + backward, compiled alone (see
  the module docstring)."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import PartitionSpec as P
  from jaxlab.aot import check
  from jaxlab.models.transformer import Attention, rope_frequencies, rope_tables
  from jaxlab.parallel import activation_rules, logical_sharding
  m = cfg.model
  B, T, D, Kh = cfg.train.batch_size, cfg.data.seq_len, m.d_model, m.dim_per_head // 2
  module = Attention(m)

  def inputs(b, t):
    ids = jnp.ones((b, t), jnp.int32)
    rope = rope_tables(jnp.broadcast_to(jnp.arange(t), (b, t)), rope_frequencies(m, 2 * Kh))
    return jnp.zeros((b, t, D), m.dtype), rope, ids
  params = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs(1, 8))['params'])

  def fwd_bwd(params, x_BxTxD, rope_BxTxKh, ids_BxT):
    def loss(params, x_BxTxD):
      out_BxTxD = module.apply({'params': params}, x_BxTxD, rope_BxTxKh, ids_BxT)
      return jnp.sum(out_BxTxD.astype(jnp.float32))
    with activation_rules(mesh):
      return jax.grad(loss, argnums=(0, 1))(params, x_BxTxD)

  def sharded(shape, dtype, names):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=logical_sharding(P(*names), mesh))
  rope = sharded((B, T, Kh), jnp.float32, ('batch', 'seq', None))
  args = (jax.tree.map(lambda p: sharded(p.shape, p.dtype, (None,) * p.ndim), params),
          sharded((B, T, D), m.dtype, ('batch', 'seq', 'embed')), (rope, rope),
          sharded((B, T), jnp.int32, ('batch', 'seq')))
  try:
    compiled, seconds = check.compile_for(jax.jit(fwd_bwd), args, mesh)
  except check.DoesNotFit as err:
    return {'temp': None, 'needed': err.needed_bytes, 'error': str(err)[:300]}
  return {'temp': check.memory(compiled)['temp'], 'seconds': seconds, 'kernel': _kernel(compiled)}


def measure(seq_len: int, context: int, remat: str, attention: str, target_text: str,
            with_attention: bool) -> dict:
  """One cell: the train step's memory (and, if asked, attention's alone). In-process."""
  from jaxlab import growth
  from jaxlab.aot import check
  from jaxlab.train.program import build_program
  target = parse_target(target_text)
  cfg = config_lib.load(EXPERIMENT, overrides(seq_len, context, remat, attention, target.chips))
  mesh, note = _mesh(cfg, target)
  program = build_program(cfg, mesh, 0, growth.phases(cfg))
  t0 = time.perf_counter()
  try:
    row = check.check_phase(cfg, target, mesh, [program], 0, None)
  except Exception as err:   # noqa: BLE001 -- a compile error is a result of the table
    return {'error': f'{type(err).__name__}: {str(err).splitlines()[0][:300]}',
            'compile_seconds': time.perf_counter() - t0, 'note': note}
  out = {k: row.get(k) for k in ('fits', 'hbm_bytes_per_chip', 'hbm_is_lower_bound',
                                 'hbm_capacity_bytes', 'compile_seconds', 'error', 'mesh')}
  out.update(memory=row['memory'].get('train'), note=note,
             kernel=_kernel(row['compiled']['train']) if 'train' in row['compiled'] else None)
  if with_attention:
    out['attention'] = attention_alone(cfg, mesh)
  return out


def measure_in_child(seq_len, context, remat, attention, target_text, with_attention) -> dict:
  cmd = [sys.executable, __file__, '--one', f'{seq_len},{context},{remat}', '--attention',
         attention, '--target', target_text] + ([] if with_attention else ['--no-attention'])
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  lines = proc.stdout.strip().splitlines()
  if proc.returncode != 0 or not lines:
    tail = (proc.stderr.strip().splitlines() or [''])[-1][:300]
    return {'error': f'child exited {proc.returncode}: {tail}', 'wall_seconds': wall}
  return dict(json.loads(lines[-1]), wall_seconds=wall)


def _gib(n) -> str:
  return '?' if n is None else f'{n / GIB:.1f}'


def _cell(r: dict | None) -> str:
  if r is None:
    return ''
  if r.get('memory') is None or r.get('hbm_is_lower_bound'):
    if r.get('hbm_bytes_per_chip') is not None:
      return f"**>= {_gib(r['hbm_bytes_per_chip'])}** refused"
    return 'failed (note)'
  m = r['memory']
  total = _gib(r['hbm_bytes_per_chip'])
  return f"{total if r['fits'] else f'**{total}**'} ({_gib(m['temp'])})"


def table(results: dict, remats, capacity) -> str:
  """results: (seq_len, context) -> {remat: cell result, 'attention': ...}."""
  head = ['T', 'context', 'mesh fsdp x context', 'tokens / chip', 'kernel', 'state GiB']
  head += [f'{r}: HBM GiB (temp)' for r in remats]
  head += ['fits', 'attention alone: temp GiB', 'compile s']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  notes = []
  for (T, c), cells in sorted(results.items()):
    done = [cells[r] for r in remats if r in cells and cells[r].get('memory')]
    state = _gib(done[0]['memory']['argument']) if done else '?'
    kernel = next((x['kernel'] for x in done if x.get('kernel')), '?')
    fits = [r for r in remats if cells.get(r, {}).get('fits')]
    att = cells.get('attention') or {}
    if att.get('temp') is not None:
      att_cell = f"{att['temp'] / GIB:.3g}"
    elif att.get('needed') is not None:
      att_cell = f">= {_gib(att['needed'])} refused"
    else:
      att_cell = '?' if att else ''
    secs = ' / '.join(f"{cells[r]['compile_seconds']:.0f}" for r in remats
                      if cells.get(r, {}).get('compile_seconds') is not None)
    for r in remats:
      err = cells.get(r, {}).get('error')
      if err and not cells[r].get('hbm_is_lower_bound'):
        notes.append(f'- T={T} context={c} {r}: {err}')
    note = next((x.get('note') for x in cells.values() if isinstance(x, dict) and x.get('note')),
                None)
    mark = ' *' if note else ''
    lines.append(f'| {T // 1024}k | {c}{mark} | {_mesh_text(cells)} | '
                 f'{T // c} | {kernel} | {state} | '
                 + ' | '.join(_cell(cells.get(r)) for r in remats)
                 + f" | {', '.join(fits) if fits else '**no**'} | {att_cell} | {secs} |")
  lines.append('')
  lines.append(f'HBM per chip of {_gib(capacity)} GiB (what libtpu lets a program use); '
               '**bold**: does not fit. Compile-time figures from libtpu on a CPU host, not '
               'measurements on a TPU.')
  if any(isinstance(x, dict) and x.get('note') for cells in results.values()
         for x in cells.values()):
    lines.append('* batch smaller than the 4 hosts: `launch.py compile` (and `run`) refuse it '
                 'today, since the data loader gives each host whole sequences; compiled here '
                 'on the same mesh without that check.')
  return '\n'.join(lines + notes) + '\n'


def _mesh_text(cells: dict) -> str:
  for x in cells.values():
    if isinstance(x, dict) and x.get('mesh'):
      return f"{x['mesh']['fsdp']} x {x['mesh']['context']}"
  return '?'


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(',') if x]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seq-lens', default=','.join(map(str, SEQ_LENS)))
  parser.add_argument('--contexts', default=','.join(map(str, CONTEXTS)))
  parser.add_argument('--remats', default=','.join(REMATS))
  parser.add_argument('--attention', default='auto',
                      help='model.attention (default auto: what the model picks per mesh)')
  parser.add_argument('--target', default=TARGET)
  parser.add_argument('--no-attention', action='store_true',
                      help='skip the attention-alone compile')
  parser.add_argument('--out', default=None, help='also write the table here (and the raw '
                      'results next to it, as .json)')
  parser.add_argument('--one', default=None, metavar='T,CONTEXT,REMAT',
                      help='measure one cell in this process and print it as JSON (what the '
                           'benchmark runs in each child process)')
  args = parser.parse_args()
  aot.use_cpu_host()
  if args.one:
    T, c, remat = args.one.split(',')
    print(json.dumps(measure(int(T), int(c), remat, args.attention, args.target,
                             not args.no_attention)))
    return
  remats = args.remats.split(',')
  if any(r not in ('none',) + REMATS for r in remats):
    parser.error(f'--remats {args.remats}: allowed are none, {", ".join(REMATS)}')
  target = parse_target(args.target)
  print(target.describe(), flush=True)
  results = {}
  for T in _ints(args.seq_lens):
    for c in _ints(args.contexts):
      cells = results.setdefault((T, c), {})
      for k, remat in enumerate(remats):
        first = k == 0 and not args.no_attention
        r = measure_in_child(T, c, remat, args.attention, args.target, first)
        if first:
          cells['attention'] = r.pop('attention', None) or {'error': r.get('error')}
        cells[remat] = r
        print(f'  T={T} context={c} remat={remat}: '
              f"{_cell(r) or r.get('error')} ({r['wall_seconds']:.0f} s)", file=sys.stderr,
              flush=True)
      print(table(results, remats, target.hbm_bytes), flush=True)
  if args.out:
    out = pathlib.Path(args.out)
    out.write_text(table(results, remats, target.hbm_bytes))
    raw = [{'seq_len': T, 'context': c, **cells} for (T, c), cells in sorted(results.items())]
    out.with_suffix('.json').write_text(json.dumps(raw, indent=1) + '\n')


if __name__ == '__main__':
  main()
