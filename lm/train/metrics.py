"""The progress line on stdout (process 0 only); where metrics are stored is `trackers.py`."""

from __future__ import annotations

import datetime
import sys
import threading
import time


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


class Phase:
  """A live line while something slow runs: `compiling train step...`, then `compiling train step: 4.2s`.

  On a terminal the line counts the seconds as they pass; in a log file it is two lines. `seconds` holds the
  time taken once the block has run.
  """

  def __init__(self, what: str, enabled: bool = True, stream=None):
    self.what, self.enabled, self.stream = what, enabled, stream or sys.stdout
    self.seconds = 0.0
    self._stop = None

  def __enter__(self):
    self.start = time.time()
    if not self.enabled:
      return self
    live = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.stream.write(f"{self.what}..." + ("" if live else "\n"))
    self.stream.flush()
    if live:
      self._stop = threading.Event()

      def tick():
        while not self._stop.wait(1.0):
          self.stream.write(f"\r{self.what}... {time.time() - self.start:.0f}s")
          self.stream.flush()
      self._thread = threading.Thread(target=tick, daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc):
    self.seconds = time.time() - self.start
    if not self.enabled:
      return
    if self._stop is not None:
      self._stop.set()
      self._thread.join()
      self.stream.write("\r")
    failed = " (failed)" if exc[0] is not None else ""
    self.stream.write(f"{self.what}: {self.seconds:.1f}s{failed}\n")
    self.stream.flush()
