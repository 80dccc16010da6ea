"""Ahead-of-time compilation for accelerators from a CPU host (what `launch.py compile`
runs, jaxlab.launch.compile): targets.py names the topologies, gpu.py describes GPU hosts,
check.py compiles a run's phases and measures them, report.py writes compile.json and the
table."""
from jaxlab.aot.check import check_run
from jaxlab.aot.targets import Target, parse_target, use_cpu_host

__all__ = ['Target', 'check_run', 'parse_target', 'use_cpu_host']
