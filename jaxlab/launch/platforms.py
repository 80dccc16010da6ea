"""Which of JAX's backends a command starts. On a machine without TPU chips, libtpu (the
[tpu] extra, installed to compile for TPU slices from a CPU: `launch.py compile`, the
tests) is still found when JAX looks for backends; it then asks the TPU VM metadata
server for the slice it runs on and logs errors such as "Failed to find host bounds for
accelerator type" and "unexpected worker hostname" -- on a CPU run that reads as a
failure. So when no TPU is attached and nobody chose the platforms, the command line sets
JAX_PLATFORMS to the backends that are there (cuda,cpu on a GPU machine, else cpu) before
JAX starts; the sweep's point processes inherit it. Compiling for a TPU target needs only
the CPU backend (jaxlab.aot)."""
from __future__ import annotations

import glob
import importlib.util
import os
import pathlib

from jaxlab.launch import gpu_flags

_GOOGLE_PCI_VENDOR = '0x1ae0'   # TPU chips are Google PCI devices


def tpu_attached() -> bool:
  """Does this machine have TPU chips (a TPU VM)? Read from the device files, as JAX's own
  start-up does, without starting JAX."""
  if glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'):
    return True
  for vendor in glob.glob('/sys/bus/pci/devices/*/vendor'):
    try:
      if pathlib.Path(vendor).read_text().strip() == _GOOGLE_PCI_VENDOR:
        return True
    except OSError:
      continue
  return False


def skip_absent_tpu(environ=os.environ) -> str | None:
  """Sets JAX_PLATFORMS when libtpu is installed, no TPU is attached and JAX_PLATFORMS is
  unset; returns what it set (None when it left the environment alone)."""
  if environ.get('JAX_PLATFORMS') or importlib.util.find_spec('libtpu') is None:
    return None
  if tpu_attached():
    return None
  environ['JAX_PLATFORMS'] = 'cuda,cpu' if gpu_flags.gpu_expected(environ) else 'cpu'
  return environ['JAX_PLATFORMS']
