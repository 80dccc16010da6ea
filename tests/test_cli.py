"""First contact with the command line: every command in --help on one line, a wrong
experiment name answered with the experiments, and a CPU run that prints a header, no
TPU noise (libtpu is installed in the test environment) and rounded figures."""
import os
import pathlib
import re
import subprocess
import sys

from jaxlab.config import loading

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMANDS = ('run', 'sweep', 'grow', 'export', 'submit', 'compile', 'show', 'prepare', 'report', 'fit',
            'coordcheck', 'steplaw')


def launch(*args, **kw):
  """launch.py as a user starts it: without the JAX_PLATFORMS=cpu that conftest sets for
  the test process (the command line must keep an absent TPU quiet by itself)."""
  kw.setdefault('env', {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'})
  return subprocess.run([sys.executable, str(ROOT / 'launch.py'), *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=300, **kw)


def test_help_lists_every_command_on_one_line():
  proc = launch('--help', env={'COLUMNS': '80', 'PATH': ''})
  assert proc.returncode == 0
  lines = proc.stdout.splitlines()
  for command in COMMANDS:
    at = [i for i, line in enumerate(lines) if re.match(rf'    {command} +\S', line)]
    assert len(at) == 1, command
    follow = lines[at[0] + 1]
    assert not re.match(r' {10,}\S', follow), f'{command}: its help runs over a line'
  assert '{' + ','.join(COMMANDS) + '}' in proc.stdout


def test_a_wrong_experiment_lists_the_experiments_only():
  proc = launch('run', 'no_such_experiment_at_all')
  assert proc.returncode == 2
  known = re.search(r'known: (.*)$', proc.stderr.strip()).group(1).split(', ')
  experiments = sorted(p.stem for p in (ROOT / 'experiments').glob('*.py'))
  assert known == experiments and 'tiny' in known
  assert not any(name.startswith(('bench_', 'device_', 'compile_')) for name in known)
  assert loading.experiment_names() == experiments


def test_a_cpu_run_prints_a_header_no_tpu_errors_and_rounded_figures(tmp_path):
  proc = launch('run', 'tiny', 'train.steps=2', 'train.eval_every=0',
                f'train.workdir={tmp_path}')
  assert proc.returncode == 0, proc.stderr
  assert 'tpu' not in proc.stderr.lower(), proc.stderr
  out = proc.stdout.splitlines()
  assert out[0] == f'run {tmp_path / "tiny"}: 2 steps'
  assert re.match(r'model d\d+ L\d+ H\d+/\d+ F\d+, [0-9.]+M params, float32; 1 cpu device\(s\), '
                  r'mesh not split; [0-9,]+ tokens per step \(\d+ x \d+\), [0-9.e+]+ FLOPs per '
                  r'step$', out[1]), out[1]
  assert re.match(rf'done: {re.escape(str(tmp_path / "tiny"))} \(step 2, final loss \d+\.\d{{4}}, '
                  r'val loss \d+\.\d{4}\)$', out[-1]), out[-1]


def test_an_absent_tpu_is_not_started():
  """libtpu is installed here (the [tpu] extra) and no TPU is attached: the command line
  keeps JAX to the CPU, unless JAX_PLATFORMS was chosen."""
  from jaxlab.launch import platforms
  assert not platforms.tpu_attached()
  env = {}
  assert platforms.skip_absent_tpu(env) == 'cpu' and env == {'JAX_PLATFORMS': 'cpu'}
  env = {'JAX_PLATFORMS': 'tpu,cpu'}
  assert platforms.skip_absent_tpu(env) is None and env == {'JAX_PLATFORMS': 'tpu,cpu'}


def test_a_compile_error_is_one_line_with_no_libtpu_log_after_it(tmp_path):
  """A call the chosen kernel cannot run, found while compiling (in `run` and in
  `compile --target tpu:...`): one line on stderr, exit 2, nothing of libtpu's log before
  or after it."""
  bad = ['model.attention=splash', 'train.batch_size=8', 'model.d_model=96', 'model.n_heads=3',
         'model.n_kv_heads=3', f'train.workdir={tmp_path}']
  for argv in (['run', 'tiny', 'train.steps=1', *bad],
               ['compile', 'tiny', '--target', 'tpu:v5e-8', *bad]):
    proc = launch(*argv)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, (argv[0], proc.stderr[-2000:])
    assert err[0].startswith('error: ') and 'T=32 must be a multiple of 128' in err[0], err
