"""`launch.py submit` and `launch.py sweep --target tpu|slurm`: options.py (the flags),
commands.py (load, compile check, then run on a Cloud TPU slice: tpu.py, or a SLURM GPU
cluster: slurm.py), common.py (steps, the project copy, argv). Nothing is imported here,
so that building the command line parser loads no jax."""
