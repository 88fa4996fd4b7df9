"""Where a run's metrics go: `train.trackers` names them, each one class.

Built in: `jsonl` (`WORKDIR/metrics.jsonl`, one JSON object per record), `tensorboard` (`WORKDIR/tensorboard/`)
and `wandb` (Weights & Biases; `pip install -e '.[wandb]'`; `WANDB_MODE=offline` keeps it on disk, and
`WANDB_PROJECT` / `WANDB_ENTITY` choose where it goes online). Any other name is a dotted path to a `Tracker`
subclass (`mypkg.trackers.MLflow`). Trackers run on process 0 only. A tracker that fails (a full disk, a lost
connection) warns once and stops; the run goes on, since its checkpoints report their own errors.

On an object store (a `gs://` workdir) nothing is appended, since an object is written whole: `jsonl` keeps
the file's records in memory and uploads it whole at most every `REMOTE_FLUSH_SECONDS` and at `close()`, and
`tensorboard` writes each such window's events to a new event file (TensorBoard reads every file in the
directory). A run killed without `close()` (SIGKILL) loses at most that window of metrics there.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import secrets
import socket
import struct
import sys
import tempfile
import time
from typing import Any

from etils import epath

from lm.errors import ConfigError, did_you_mean
from lm.train import checkpoint


class Tracker:
  """One destination of metrics. `requires` names the modules it imports (checked before the run starts)."""

  requires: tuple[str, ...] = ()

  def __init__(self, workdir: epath.Path, config: dict, start_step: int):
    """A run (or its resumption at `start_step`) with `config` (the run's config as a dict) in `workdir`."""

  def write(self, step: int, metrics: dict[str, float]) -> None:
    raise NotImplementedError

  def close(self) -> None:
    """Flush and release; called once at the end of the run (or its preemption)."""


REMOTE_FLUSH_SECONDS = 60.0


def is_remote(path) -> bool:
  """Whether `path` is on an object store (`gs://...`), where files are written whole, never appended to."""
  return "://" in str(path)


class Jsonl(Tracker):
  """`metrics.jsonl`: `{"step": N, "loss": ..., ...}` per record, appended across resumes (on an object store:
  the earlier records read back first, the whole file rewritten at each flush)."""

  def __init__(self, workdir, config, start_step):
    super().__init__(workdir, config, start_step)
    self._path = epath.Path(workdir) / "metrics.jsonl"
    self._remote = is_remote(self._path)
    if self._remote:
      text = self._path.read_text() if self._path.exists() else ""
      self._lines = [text + ("\n" if text and not text.endswith("\n") else "")]
      self._pending, self._flushed = False, time.monotonic()
    else:
      self._file = self._path.open("a")

  def write(self, step, metrics):
    line = json.dumps({"step": int(step), **metrics}) + "\n"
    if not self._remote:
      self._file.write(line)
      self._file.flush()
      return
    self._lines.append(line)
    self._pending = True
    if time.monotonic() - self._flushed >= REMOTE_FLUSH_SECONDS:
      self._flush()

  def _flush(self):
    checkpoint.write_text(self._path, "".join(self._lines))
    self._pending, self._flushed = False, time.monotonic()

  def close(self):
    if not self._remote:
      self._file.close()
    elif self._pending:
      self._flush()


def _crc32c_table() -> list[int]:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum TFRecord framing uses."""
  c = 0xFFFFFFFF
  for b in data:
    c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
  c = crc32c(data)
  return struct.pack("<I", (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # a length-delimited protobuf field
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event_record(wall_time: float, step: int = 0, scalars: dict[str, float] | None = None,
                 file_version: str = "") -> bytes:
  """One TFRecord of a TensorBoard `Event` (wall_time = 1, step = 2, file_version = 3, summary = 5; a
  summary's values = 1, each with tag = 1 and simple_value = 2), encoded by hand: no protobuf classes."""
  event = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(int(step) & (2 ** 64 - 1))
  if file_version:
    event += _field(3, file_version.encode())
  if scalars:
    values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
                      for tag, value in scalars.items())
    event += _field(5, values)
  length = struct.pack("<Q", len(event))
  return length + _masked_crc(length) + event + _masked_crc(event)


class TensorBoard(Tracker):
  """Scalars in `tensorboard/` event files, written synchronously by this module (TFRecords of `Event`
  protos): a failed write is an error here, where it stops this tracker, never a dead background thread.
  No tensorboardX: importing it imports torch where torch is installed (~150 MB of a CPU run's RSS).
  Locally one file is appended to; on an object store each flush window is a file of its own."""

  def __init__(self, workdir, config, start_step):
    super().__init__(workdir, config, start_step)
    self._directory = epath.Path(workdir) / "tensorboard"
    self._directory.mkdir(parents=True, exist_ok=True)
    self._start_step, self._remote = int(start_step), is_remote(self._directory)
    if self._remote:
      self._records, self._windows, self._flushed = [], 0, time.monotonic()
    else:
      self._file = self._new_file().open("wb")
      self._file.write(event_record(time.time(), file_version="brain.Event:2"))
      self._file.flush()

  def _new_file(self) -> epath.Path:
    # TensorBoard's name pattern; the pid and step keep two writers in one second apart, and the window
    # number (zero-padded) keeps one writer's files in the order they were written, which TensorBoard reads in.
    name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.{self._start_step}"
            + (f".{self._windows:06d}" if self._remote else ""))
    return self._directory / name

  def write(self, step, metrics):
    record = event_record(time.time(), step, {k: float(v) for k, v in metrics.items()})
    if not self._remote:
      self._file.write(record)
      self._file.flush()
      return
    self._records.append(record)
    if time.monotonic() - self._flushed >= REMOTE_FLUSH_SECONDS:
      self._flush()

  def _flush(self):
    self._new_file().write_bytes(event_record(time.time(), file_version="brain.Event:2") + b"".join(self._records))
    self._records, self._windows, self._flushed = [], self._windows + 1, time.monotonic()

  def close(self):
    if not self._remote:
      self._file.close()
    elif self._records:
      self._flush()


class Wandb(Tracker):
  """A Weights & Biases run named after the experiment; its id is kept in `WORKDIR/wandb_id`, so a resumed
  run continues the same W&B run. Files go under `WORKDIR/wandb/` (wandb writes only local files: for a
  `gs://` workdir under `$WANDB_DIR`, else the temporary directory)."""

  requires = ("wandb",)

  def __init__(self, workdir, config, start_step):
    super().__init__(workdir, config, start_step)
    import wandb
    workdir = epath.Path(workdir)
    id_file = workdir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
    id_file.write_text(run_id)
    local = workdir
    if is_remote(workdir):
      local = epath.Path(os.environ.get("WANDB_DIR") or tempfile.gettempdir()) / f"lm-wandb-{run_id}"
    (local / "wandb").mkdir(parents=True, exist_ok=True)
    self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", "lm"), name=config.get("experiment") or None,
                           id=run_id, resume="allow", dir=str(local), config=config,
                           settings=wandb.Settings(console="off", silent=True))

  def write(self, step, metrics):
    self._run.log(dict(metrics), step=int(step))

  def close(self):
    self._run.finish()


BUILTIN: dict[str, type[Tracker]] = {"jsonl": Jsonl, "tensorboard": TensorBoard, "wandb": Wandb}


def get(name: str) -> type[Tracker]:
  """The tracker class `name` names: a built-in or `module.Class`."""
  if name in BUILTIN:
    return BUILTIN[name]
  module, _, attr = name.rpartition(".")
  cls = None
  if module:
    try:
      cls = getattr(importlib.import_module(module), attr, None)
    except ModuleNotFoundError as e:
      if e.name is None or not module.startswith(e.name):
        raise
  if not (isinstance(cls, type) and issubclass(cls, Tracker)):
    raise ConfigError(f"train.trackers: unknown tracker {name!r}; {did_you_mean(name, BUILTIN)}choose from "
                      f"{', '.join(BUILTIN)} or give module.Class of a lm.train.trackers.Tracker subclass")
  try:  # its signature, read without making one: Trackers makes it with these arguments
    inspect.signature(cls).bind(epath.Path("."), {}, 0)
  except TypeError:
    raise ConfigError(f"train.trackers: {name} must be made as {attr}(workdir, config, start_step), as "
                      "lm.train.trackers.Tracker is") from None
  except ValueError:
    pass  # no signature to read
  return cls


def check(names) -> None:
  """Every name resolves and what its tracker imports is installed (before the run starts)."""
  if isinstance(names, str) or not all(isinstance(n, str) for n in names):
    raise ConfigError(f"train.trackers={names!r} must be a list of names, e.g. --config.train.trackers=jsonl,wandb")
  repeated = sorted({n for n in names if list(names).count(n) > 1})
  if repeated:
    raise ConfigError(f"train.trackers names {', '.join(map(repr, repeated))} twice; list each tracker once")
  for name in names:
    for module in get(name).requires:
      if importlib.util.find_spec(module) is None:
        extra = f"pip install -e '.[{name}]'" if name == "wandb" else f"pip install {module}"
        raise ConfigError(f"train.trackers includes {name!r} but {module} is not installed; {extra}, or drop "
                          f"{name!r} from train.trackers")


class Trackers:
  """The run's trackers as one: `write(step, metrics)` to each, `close()` all. Disabled off process 0."""

  def __init__(self, names, workdir, config: dict, start_step: int = 0, enabled: bool = True):
    self.workdir, self.trackers = epath.Path(workdir), {}
    if not enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    for name in names:
      try:
        self.trackers[name] = get(name)(self.workdir, config, start_step)
      except Exception as e:  # pylint: disable=broad-except  # a tracker must never stop a run
        self._warn(name, e, "cannot start")

  def _warn(self, name: str, e: BaseException, what: str, then: str = "training goes on without it") -> None:
    text = str(e).strip()
    why = getattr(e, "strerror", None) or (text.splitlines()[0][:200] if text else type(e).__name__)
    sys.stderr.write(f"warning: tracker {name!r} {what} in {self.workdir} ({why}); {then}\n")

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    record = {k: float(v) for k, v in metrics.items()}
    for name, tracker in list(self.trackers.items()):
      try:
        tracker.write(int(step), record)
      except Exception as e:  # pylint: disable=broad-except
        self._warn(name, e, "cannot write")
        self._close(name)

  def _close(self, name: str, warn: bool = False) -> None:
    tracker = self.trackers.pop(name)
    try:
      tracker.close()
    except Exception as e:  # pylint: disable=broad-except
      if warn:  # on an object store the last window is uploaded here: its failure is worth a line
        self._warn(name, e, "cannot close", "its last records may be missing")

  def close(self) -> None:
    for name in list(self.trackers):
      self._close(name, warn=True)
