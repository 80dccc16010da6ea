"""Diagnostics: weight norms and effective steps (weights.py), top singular values
(spectral.py), the val loss by position (positions.py), the muP coordinate check
(coordcheck.py, launch.py coordcheck), hyperparameter transfer across widths in a sweep
(transfer.py).
`write_report_sections` adds the ones a run logged to its report."""
from __future__ import annotations


def write_report_sections(runs, root, baseline: str | None = None) -> str:
  """Saves the plot of each diagnostic the runs logged into `root` (a pathlib.Path);
  returns their report.md sections ('' when none). baseline: a method label to pair
  against (the val loss by position), or None."""
  from jaxlab.diagnostics import positions, spectral, transfer, weights
  text = transfer.write(runs, root)   # best lr / weight decay per width, if a sweep spans them
  if positions.has_stats(runs):  # val loss by position (train.eval_positions)
    text += '\n' + positions.render(positions.summary_rows(runs, baseline), baseline)
  if weights.has_stats(runs):   # weight norms / effective steps / AdamP projections
    weights.plot(runs).savefig(root / 'weight_stats.png', bbox_inches='tight')
    text += '\n' + weights.render(weights.summary_rows(runs))
  if spectral.has_stats(runs):  # top singular values (train.spectral_every)
    spectral.plot(runs).savefig(root / 'spectral.png', bbox_inches='tight')
    text += '\n' + spectral.render(spectral.summary_rows(runs))
  return text
