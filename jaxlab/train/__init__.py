from jaxlab.train.loop import Diverged, Preempted, run_dir_of, train

__all__ = ['Diverged', 'Preempted', 'run_dir_of', 'train']
