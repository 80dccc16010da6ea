"""Training: `train(cfg)` runs or resumes one run (loop.py: the Trainer of trainer.py with
its hooks, one Program per growth phase from program.py, the jitted step of step.py)."""
from jaxlab.train.loop import Diverged, Preempted, train
from jaxlab.train.runnable import resolve

__all__ = ['Diverged', 'Preempted', 'resolve', 'train']
