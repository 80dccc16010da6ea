"""FLOPs accounting, MFU, and the metric writers (metrics.jsonl, TensorBoard, progress line).

The one FLOPs formula (Kaplan et al. 2020 / PaLM appendix B, causal attention halved):

  flops_per_token = 6 * N_matmul + 6 * n_layers * seq_len * n_heads * head_dim

N_matmul counts the parameters that take part in a matmul for every token: the
attention projections, the SwiGLU matrices and the output head (tied or not); the
embedding lookup is a gather and norm gains are elementwise, so neither counts. The
factor 6 is 2 (multiply-add) x 3 (forward + backward: two matmuls per forward one).
Attention scores QK^T and the weighted sum AV cost 2 * 2 * T * H * K per token per
layer forward, x3 for the backward, halved for the causal mask: 6 * T * H * K. These
are model FLOPs: recomputation under remat is not counted (as MFU convention asks).
"""
from __future__ import annotations

import json
import math
import pathlib
import sys
import time

import jax
import numpy as np

from jaxlab.config_types import ModelConfig
from jaxlab.models import schema


def matmul_params(cfg: ModelConfig) -> int:
  """Params in a matmul for every token, from the parameter schema: the hidden matrices
  and the readout (the untied head, or the tied embedding)."""
  roles = ('hidden', 'output') + (('embedding',) if cfg.tie_embeddings else ())
  return schema.count(cfg, roles)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs (forward + backward) per token of a sequence of `seq_len`."""
  attention = 6 * cfg.n_layers * seq_len * cfg.n_heads * cfg.dim_per_head
  return float(6 * matmul_params(cfg) + attention)


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# Dense bf16 peak FLOP/s per chip, by a substring of jax.Device.device_kind (first match
# wins, so the more specific names come first). Sources: NVIDIA and Google Cloud specs.
PEAK_FLOPS = (
    ('H100 PCIe', 756e12),
    ('H100', 989e12),
    ('H200', 989e12),
    ('A100', 312e12),
    ('TPU v4', 275e12),
    ('TPU v5 lite', 197e12),   # v5e
    ('TPU v5e', 197e12),
    ('TPU v5p', 459e12),
    ('TPU v5', 459e12),
    ('TPU v6 lite', 918e12),   # v6e (Trillium)
    ('TPU v6e', 918e12),
)


def peak_flops_per_device(device_kind: str) -> float | None:
  for name, peak in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def mfu(flops_per_sec: float, device_kind: str, n_devices: int) -> float | None:
  peak = peak_flops_per_device(device_kind)
  if peak is None:
    return None
  return flops_per_sec / (peak * n_devices)


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def _si(x: float) -> str:
  for unit, scale in (('G', 1e9), ('M', 1e6), ('k', 1e3)):
    if abs(x) >= scale:
      return f'{x / scale:.1f}{unit}'
  return f'{x:.0f}'


def progress_line(record: dict, total_steps: int, eta_sec: float | None) -> str:
  parts = [f"step {record['step']}/{total_steps}", f"loss {record['loss']:.4f}"]
  if record.get('val_loss') is not None:
    parts.append(f"val {record['val_loss']:.4f}")
  if record.get('tokens_per_sec'):
    parts.append(f"{_si(record['tokens_per_sec'])} tok/s")
  if record.get('mfu') is not None:
    parts.append(f"mfu {100 * record['mfu']:.1f}%")
  if eta_sec is not None:
    parts.append(f'ETA {_format_duration(eta_sec)}')
  return ' | '.join(parts)


class MetricsWriter:
  """Writes each logged record to metrics.jsonl (the source of truth), TensorBoard and
  a progress line. On resume, records after `resume_step` are dropped from the jsonl
  file (they were logged after the checkpoint and will be logged again)."""

  def __init__(self, run_dir: pathlib.Path, total_steps: int, resume_step: int = 0,
               enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.total_steps = total_steps
    self.path = pathlib.Path(run_dir) / 'metrics.jsonl'
    self._tty = sys.stdout.isatty()
    self._tb = None
    if not enabled:
      return
    self._truncate(resume_step)
    self._file = open(self.path, 'a')
    if tensorboard:
      from tensorboardX import SummaryWriter  # no TensorFlow needed
      # purge_step: TensorBoard hides events an earlier, interrupted session logged past
      # the checkpoint this one resumes from (as the jsonl truncation above does).
      self._tb = SummaryWriter(str(pathlib.Path(run_dir) / 'tensorboard'),
                               purge_step=resume_step + 1)

  def _truncate(self, resume_step: int):
    if not self.path.exists():
      return
    kept = []
    for line in self.path.read_text().splitlines():
      try:
        if json.loads(line).get('step', 0) <= resume_step:
          kept.append(line)
      except json.JSONDecodeError:
        continue  # a line cut short by a kill
    self.path.write_text(''.join(k + '\n' for k in kept))

  def write(self, record: dict, eta_sec: float | None = None):
    if not self.enabled:
      return
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    if self._tb is not None:
      for key, value in record.items():
        if key != 'step' and isinstance(value, (int, float)) and math.isfinite(value):
          self._tb.add_scalar(key, value, record['step'])
    if 'loss' in record:
      line = progress_line(record, self.total_steps, eta_sec)
      print(('\r' + line + '   ') if self._tty else line, end='' if self._tty else '\n',
            flush=True)

  def write_event(self, event: dict):
    """An {"event": ...} line (e.g. a growth event); readers skip it as a metric record."""
    if self.enabled:
      self._file.write(json.dumps(event) + '\n')
      self._file.flush()

  def close(self):
    if not self.enabled:
      return
    if self._tty:
      print()
    self._file.close()
    if self._tb is not None:
      self._tb.close()


class Throughput:
  """Tokens/s over the window between two logged steps, not counting time spent in
  eval or checkpointing (`exclude`). The first window holds the compile: None."""

  def __init__(self):
    self._last = None
    self._excluded = 0.0

  def exclude(self, seconds: float):
    self._excluded += seconds

  def restart(self):
    """The next window holds a compile again (a growth event): it reports None."""
    self._last = None
    self._excluded = 0.0

  def update(self, tokens: int) -> float | None:
    now = time.perf_counter()
    rate = None
    if self._last is not None:
      t0, tok0 = self._last
      busy = now - t0 - self._excluded
      if busy > 0:
        rate = (tokens - tok0) / busy
    self._last = (now, tokens)
    self._excluded = 0.0
    return rate
