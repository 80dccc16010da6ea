"""The command line (`python launch.py COMMAND`): cli.py parses and dispatches; each
command's body is its own module (run, sweep, grow, grow_hf, export, compile, coordcheck,
submit/), sweep_points.py expands a sweep, sweep_jobs.py runs its points as processes,
gpu_flags.py holds the XLA flags of GPU runs. Nothing is imported here."""
