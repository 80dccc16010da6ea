"""bench/device_check.py end to end in its CPU mode (what a GPU lease runs, on tiny
shapes), and its time boxes."""
import pathlib
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'bench'))
import device_attention  # noqa: E402
import device_check  # noqa: E402


def _table(text: str, number: int) -> list[list[str]]:
  """Rows of section `number`'s markdown table."""
  block = text.split(f'## {number}. ')[1].split('\n## ')[0]
  return [[c.strip() for c in line.strip('|').split('|')]
          for line in block.splitlines()[4:] if line.startswith('|')]


@pytest.mark.skipif(not device_attention.tk.installed(), reason='tokamax is not installed')
def test_cpu_mode_runs_every_section(tmp_path):
  code = device_check.main(['--out', str(tmp_path), '--cpu'], hard_deadline=False)
  text = (tmp_path / 'device_check.md').read_text()
  assert code == 0, text
  check = _table(text, 1)
  # Every backend ran or said why not; the ones that ran agree with the reference.
  assert {(r[1].split(' ')[0], r[-1].split(':')[0]) for r in check} == {
      ('pallas', 'ok'), ('tokamax', 'ok'), ('xla', 'ok'), ('cudnn', 'unsupported')}
  assert any(r[1] == 'tokamax (xla)' for r in check)
  speed = _table(text, 2)
  assert all(float(r[5]) > 0 and float(r[7]) > 0 for r in speed if r[3] != 'cudnn')
  step = _table(text, 3)
  assert [r[0] for r in step] == ['none', 'full']
  assert all(float(r[3].replace(',', '')) > 0 for r in step)
  demo = _table(text, 4)
  assert len(demo) == 1 and demo[0][-1] == 'ok' and demo[0][2] == '4'


def test_a_spent_time_box_skips_the_rest():
  spent = device_check.Box(0.0, time.monotonic())
  case = device_attention.Case('tiny', 1, 8, 2, 2, 8, 'float32')
  rows = device_attention.check([case], spent, log=lambda m: None)
  assert [r[-1] for r in rows] == ['skipped: time box'] * len(device_attention.BACKENDS)
