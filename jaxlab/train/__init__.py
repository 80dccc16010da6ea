"""Training: `train(cfg)` runs or resumes one run (loop.py: the Trainer of trainer.py with
its hooks, one Program per growth phase from program.py, the jitted step of step.py).

The names below load on first use: importing a submodule (`launch.py show` needs only
runnable.resolve) then costs that submodule, not the data pipeline, orbax and grain that
the loop brings (about 1.5 s)."""
import importlib

_HOME = {'Diverged': 'loop', 'Preempted': 'loop', 'train': 'loop', 'resolve': 'runnable'}

__all__ = ['Diverged', 'Preempted', 'resolve', 'train']


def __getattr__(name):
  if name not in _HOME:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  return getattr(importlib.import_module(f'{__name__}.{_HOME[name]}'), name)
