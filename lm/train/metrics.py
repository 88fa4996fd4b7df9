"""Metrics to `metrics.jsonl`, TensorBoard event files, and a progress line on stdout (process 0 only)."""

from __future__ import annotations

import datetime
import json
import sys
import time

from etils import epath


class MetricsWriter:

  def __init__(self, workdir, enabled: bool = True):
    self.enabled = enabled
    self.workdir = epath.Path(workdir)
    self._tb = None
    if enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = (self.workdir / "metrics.jsonl").open("a")
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
      except ImportError:  # tensorboardX is a dependency, but logging must never stop a run
        self._tb = None

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    try:
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()
      if self._tb is not None:
        for k, v in metrics.items():
          self._tb.add_scalar(k, float(v), int(step))
    except OSError as e:  # a full disk must cost the metrics, not the run (checkpoints report their own)
      sys.stderr.write(f"warning: cannot write metrics in {self.workdir} ({e.strerror or e}); "
                       "training goes on without them\n")
      self.close()
      self.enabled = False

  def close(self) -> None:
    if self.enabled:
      try:
        self._jsonl.close()
        if self._tb is not None:
          self._tb.close()
      except OSError:
        pass


class Progress:
  """`step 120/1000 | loss 2.31 | bpb 3.33 | 24.1k tok/s | eta 0:00:37`."""

  def __init__(self, total_steps: int, enabled: bool = True):
    self.total, self.enabled = total_steps, enabled
    self.start_time, self.start_step = time.time(), None

  def update(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    if self.start_step is None:
      self.start_step, self.start_time = step, time.time()
    elapsed = time.time() - self.start_time
    rate = (step - self.start_step) / elapsed if elapsed > 0 and step > self.start_step else 0.0
    eta = datetime.timedelta(seconds=int((self.total - step) / rate)) if rate else "?"
    parts = [f"step {step}/{self.total}"]
    for key in ("loss", "bpb", "val_bpb"):
      if key in metrics:
        parts.append(f"{key} {metrics[key]:.4f}")
    if "tokens_per_sec" in metrics:
      parts.append(f"{metrics['tokens_per_sec'] / 1e3:.1f}k tok/s")
    parts.append(f"eta {eta}")
    print(" | ".join(parts), file=sys.stdout, flush=True)
