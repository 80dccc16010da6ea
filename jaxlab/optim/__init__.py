# `jaxlab.optim.adamp` / `jaxlab.optim.steplaw` are functions (the contract); their modules
# are reached with `from jaxlab.optim.adamp import ...`, which Python resolves through
# sys.modules.
from jaxlab.optim.adamp import Layout, adamp, fired_fraction, scale_by_adamp, scale_by_sgdp, sgdp
from jaxlab.optim.build import adamp_layout, make_optimizer, make_schedule
from jaxlab.optim.steplaw import non_embedding_params, steplaw

__all__ = ['adamp', 'sgdp', 'scale_by_adamp', 'scale_by_sgdp', 'Layout', 'fired_fraction',
           'adamp_layout', 'make_optimizer', 'make_schedule', 'steplaw', 'non_embedding_params']
