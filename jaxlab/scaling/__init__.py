"""Scaling laws fitted to a sweep's own runs (`launch.py fit`); numpy and scipy, no jax.

  laws.py        sums of power laws with an irreducible term: log-sum-exp, Huber, grid
                 starts, bootstrap (Hoffmann et al. 2022; Besiroglu et al. 2024)
  chinchilla.py  L(N, D) = E + A/N^alpha + B/D^beta and the compute-optimal allocation
  frontier.py    L(C) = E + A/C^gamma of a ladder; growth's compute multiplier
  powerlaw.py    y = c prod x^e by least squares in log space, t-intervals
  isoflop.py     isoFLOP profiles and N_opt = G C^a (Hoffmann et al.'s approach 2)
  hparams.py     lr*(N, D) and B*(D) in Step Law's form, beside its constants
  points.py      a sweep's finished runs as points (through jaxlab.rundir.read)
  write.py       fit_<law>.md and its plots

docs/scaling.md: the methods, their measured coverage, and the sources.
"""
from jaxlab.scaling.chinchilla import ChinchillaFit, fit_chinchilla
from jaxlab.scaling.frontier import FrontierFit, compute_multiplier, fit_frontier, fit_frontier_curves
from jaxlab.scaling.hparams import HparamFit, fit_hparams
from jaxlab.scaling.isoflop import IsoFlopFit, fit_isoflop
from jaxlab.scaling.points import MissingData, read_points
from jaxlab.scaling.powerlaw import PowerLaw, fit_power
from jaxlab.scaling.write import LAWS, write_fit

__all__ = ['ChinchillaFit', 'FrontierFit', 'HparamFit', 'IsoFlopFit', 'LAWS', 'MissingData',
           'PowerLaw', 'compute_multiplier', 'fit_chinchilla', 'fit_frontier', 'fit_frontier_curves', 'fit_hparams',
           'fit_isoflop', 'fit_power', 'read_points', 'write_fit']
