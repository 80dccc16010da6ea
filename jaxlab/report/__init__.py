"""`launch.py report DIR`: run and sweep directories -> report.md, CSV tables and plots.

  write.py      report.md and runs.csv; the sections below when the runs hold them
  plots.py      loss vs step / FLOPs, the styling every plot shares
  stats.py      t-intervals, paired differences, t-tests, Holm
  crossing.py   FLOPs to a target and its interval; simulate.py  synthetic seed curves
  savings.py    FLOPs to reach a baseline's final val loss: saving, speedup, headline
  paired.py     paired differences between methods that differ in one config key
  transfer.py   the best lr / weight decay per width of a transfer sweep
  positions.py  the val loss by position
  spectral.py   top singular values, weights.py  weight norms and effective steps

Runs are read through jaxlab.rundir; nothing here imports jax, flax or the model.
"""
from jaxlab.report.plots import plot_loss
from jaxlab.report.write import COLUMNS, render_markdown, write_csv, write_report
from jaxlab.rundir.read import Run, load_runs, summarize

__all__ = ['COLUMNS', 'Run', 'load_runs', 'plot_loss', 'render_markdown', 'summarize',
           'write_csv', 'write_report']
