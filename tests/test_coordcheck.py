"""The coordinate check (docs/scaling_rules.md) on tiny widths: SP's hidden outputs and logits
grow with width after a few Adam steps, muP's stay flat; the CLI writes the plot, the
table and the raw numbers; bad --widths fail before anything is compiled."""
import json

import pytest

from jaxlab.launch import cli
from jaxlab.config import load
from jaxlab.launch import coordcheck

# tiny: 2 layers, 2 heads, seq 32, batch 4. Compiling each width's train step dominates
# the time (the widths cost about the same on CPU), so SP uses the two extreme widths and
# muP (through the CLI) all three. Below ~128 (head dim 16-32, 128 tokens a batch) muP is
# not yet asymptotic: over 32, 64, 128 its MLP slope measured +0.4; over 128..512 <= 0.1.
WIDTHS = (128, 256, 512)
STEPS, SEEDS = 5, 2
TOL = coordcheck.SLOPE_TOLERANCE


def by_name(rows):
  return {row['sublayer']: row for row in rows}


def test_sp_grows_with_width():
  result = coordcheck.run(load('tiny'), (WIDTHS[0], WIDTHS[-1]), 'sp', SEEDS, STEPS)
  rows = by_name(result['rows'])
  assert result['values']['attn'].shape == (2, SEEDS, STEPS + 1, 2)   # width, seed, t, layer
  # At init SP is flat as well (1/sqrt(fan_in) init): the growth comes from the updates.
  for name in ('attn', 'mlp', 'block', 'final_norm', 'logits'):
    assert abs(rows[name]['slope_init']) <= TOL, rows[name]
  # After the updates, Adam's width-independent per-entry steps add up over fan_in ~ w
  # entries: hidden outputs grow visibly (measured slopes 1-1.9), and fail; so do the
  # logits (smaller slope, ~0.3-0.4: the readout's growth is one matmul, not a stack).
  for name in ('attn', 'mlp', 'block'):
    assert rows[name]['slope'] > 2 * TOL and not rows[name]['pass'], rows[name]
  assert rows['logits']['slope'] > TOL and not rows['logits']['pass'], rows['logits']
  # Per-entry updates of the embedding table do not depend on width, even under SP.
  assert rows['embed']['pass'], rows['embed']


def test_mup_flat_through_cli(tmp_path, capsys):
  out = tmp_path / 'cc'
  rc = cli.main(['coordcheck', 'tiny', '--widths', ','.join(map(str, WIDTHS)),
                 '--parametrization', 'mup',
                 '--steps', str(STEPS), '--seeds', str(SEEDS), '--out', str(out)])
  assert rc == 0
  printed = capsys.readouterr().out
  assert '| logits |' in printed and 'sublayers flat within' in printed
  assert (out / 'coordcheck.png').read_bytes()[:4] == b'\x89PNG'
  md = (out / 'coordcheck.md').read_text()
  assert 'parametrization mup' in md and '| attn.1 |' in md
  result = json.loads((out / 'coordcheck.json').read_text())
  assert result['widths'] == list(WIDTHS) and result['base_d_model'] == WIDTHS[0]
  assert len(result['values']['logits'][0][0]) == STEPS + 1
  rows = by_name(result['rows'])
  for name in coordcheck.SUBLAYERS:
    assert rows[name]['pass'] and abs(rows[name]['slope']) <= TOL, rows[name]


@pytest.mark.parametrize('widths, message', [
    ('32,abc', "--widths '32,abc': 'abc' is not an integer"),
    ('64', '--widths \'64\': needs at least 2 distinct widths'),
    ('32,32', 'needs at least 2 distinct widths'),
    ('32,65', '--widths: 65 is not divisible by model.n_heads=2'),
    ('30,64', '--widths: width 30: head dim 15 must be even'),   # config check, re-labelled
])
def test_bad_widths_fail_before_compiling(widths, message, capsys, monkeypatch):
  def no_compile(*args, **kwargs):
    raise AssertionError('compiled despite a bad option')
  monkeypatch.setattr(coordcheck, 'measure_width', no_compile)
  assert cli.main(['coordcheck', 'tiny', '--widths', widths]) == 2
  assert message in capsys.readouterr().err


def test_bad_steps_and_seeds(capsys):
  assert cli.main(['coordcheck', 'tiny', '--widths', '32,64', '--steps', '0']) == 2
  assert '--steps 0 must be >= 1' in capsys.readouterr().err
  assert cli.main(['coordcheck', 'tiny', '--widths', '32,64', '--seeds', '0']) == 2
  assert '--seeds 0 must be >= 1' in capsys.readouterr().err
