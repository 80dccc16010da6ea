"""A run directory's facts, each once: where it is and what its files are called
(layout.py), metrics.jsonl and summary.json (records.py), the directory as the run that
writes it sees it -- lock, config guard, history (directory.py), runs read back for reports
and fits (read.py); checkpoints (checkpoint.py) and their fingerprint (fingerprint.py).
Importing this package loads no jax (checkpoint.py and fingerprint.py do, when imported).
Not called `runs`: that is the default output folder, which .gitignore and the TPU packer
skip by name."""
from jaxlab.rundir.layout import (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, method_and_seed,
                                run_dir_of, seed_run)
from jaxlab.rundir.read import (UNKNOWN_STATUS, Run, aligned, find_run_dirs, group_seeds,
                              load_run, load_runs, num, summarize)
from jaxlab.rundir.records import read_summary, status_of
from jaxlab.rundir.directory import RunDir

__all__ = ['CONFIG_FILE', 'METRICS_FILE', 'SUMMARY_FILE', 'UNKNOWN_STATUS', 'Run', 'RunDir',
           'aligned', 'find_run_dirs', 'group_seeds', 'load_run', 'load_runs',
           'method_and_seed', 'num', 'read_summary', 'run_dir_of', 'seed_run', 'status_of',
           'summarize']
