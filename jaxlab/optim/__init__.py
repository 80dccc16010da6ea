"""Optimizers: AdamP / SGDP (adamp_sgdp.py), the optimizer of a config with its per-param
lr and weight decay from the parameter schema (build.py), train.trainable (trainable.py),
and Step Law's lr and batch from N and D (step_law.py)."""
from jaxlab.optim.adamp_sgdp import (Layout, adamp, fired_fraction, scale_by_adamp,
                                     scale_by_sgdp, sgdp)
from jaxlab.optim.build import adamp_layout, make_optimizer, make_schedule
from jaxlab.optim.step_law import non_embedding_params, steplaw

__all__ = ['adamp', 'sgdp', 'scale_by_adamp', 'scale_by_sgdp', 'Layout', 'fired_fraction',
           'adamp_layout', 'make_optimizer', 'make_schedule', 'steplaw', 'non_embedding_params']
