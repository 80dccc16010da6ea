"""Model growth: depth / width operators (operators.py over depth.py, width.py),
multi-level coalescing (multilevel.py), the growth timing rule (timing.py), a run's phases
(plan.py) and the growth event inside a run (events.py).

  grow(params, src, dst, method, **kw)   params of model `src` -> params of model `dst`
  growth_timing(n_params, total_flops)   tokens to train the small model first (Du et al.)
"""
from jaxlab.growth.operators import METHODS, fresh_params, grow, grower, new_layers
from jaxlab.growth.plan import Phase, phase_index, phases, source_model
from jaxlab.growth.timing import GROWTH_FACTOR, growth_fraction, growth_timing

__all__ = ['grow', 'grower', 'growth_timing', 'growth_fraction', 'GROWTH_FACTOR', 'METHODS', 'Phase',
           'phases', 'phase_index', 'source_model', 'fresh_params', 'new_layers']
