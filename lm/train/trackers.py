"""Where a run's metrics go: `train.trackers` names them, each one class.

Built in: `jsonl` (`WORKDIR/metrics.jsonl`, one JSON object per record), `tensorboard` (`WORKDIR/tensorboard/`)
and `wandb` (Weights & Biases; `pip install -e '.[wandb]'`; `WANDB_MODE=offline` keeps it on disk, and
`WANDB_PROJECT` / `WANDB_ENTITY` choose where it goes online). Any other name is a dotted path to a `Tracker`
subclass (`mypkg.trackers.MLflow`). Trackers run on process 0 only. A tracker that fails (a full disk, a lost
connection) warns once and stops; the run goes on, since its checkpoints report their own errors.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import secrets
import sys
import time
from typing import Any

from etils import epath

from lm.errors import ConfigError, did_you_mean


class Tracker:
  """One destination of metrics. `requires` names the modules it imports (checked before the run starts)."""

  requires: tuple[str, ...] = ()

  def __init__(self, workdir: epath.Path, config: dict, start_step: int):
    """A run (or its resumption at `start_step`) with `config` (the run's config as a dict) in `workdir`."""

  def write(self, step: int, metrics: dict[str, float]) -> None:
    raise NotImplementedError

  def close(self) -> None:
    """Flush and release; called once at the end of the run (or its preemption)."""


class Jsonl(Tracker):
  """`metrics.jsonl`: `{"step": N, "loss": ..., ...}` per record, appended across resumes."""

  def __init__(self, workdir, config, start_step):
    super().__init__(workdir, config, start_step)
    self._file = (epath.Path(workdir) / "metrics.jsonl").open("a")

  def write(self, step, metrics):
    self._file.write(json.dumps({"step": int(step), **metrics}) + "\n")
    self._file.flush()

  def close(self):
    self._file.close()


class TensorBoard(Tracker):
  """Scalars in `tensorboard/` event files, written synchronously (tensorboardX's event writer): a failed
  write is an error here, where it stops this tracker, never a dead background thread that blocks the run."""

  requires = ("tensorboardX",)

  def __init__(self, workdir, config, start_step):
    super().__init__(workdir, config, start_step)
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2, summary_pb2
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    directory = epath.Path(workdir) / "tensorboard"
    directory.mkdir(parents=True, exist_ok=True)
    # The file name has the second and the host; the pid and step keep two writers in one second apart.
    self._writer = EventsWriter(str(directory / "events"), filename_suffix=f".{os.getpid()}.{int(start_step)}")

  def write(self, step, metrics):
    values = [self._summary.Value(tag=k, simple_value=v) for k, v in metrics.items()]
    self._writer.write_event(self._event(wall_time=time.time(), step=int(step), summary=self._summary(value=values)))
    self._writer.flush()

  def close(self):
    self._writer.close()


class Wandb(Tracker):
  """A Weights & Biases run named after the experiment; its id is kept in `WORKDIR/wandb_id`, so a resumed
  run continues the same W&B run. Files go under `WORKDIR/wandb/`."""

  requires = ("wandb",)

  def __init__(self, workdir, config, start_step):
    super().__init__(workdir, config, start_step)
    import wandb
    workdir = epath.Path(workdir)
    id_file = workdir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
    id_file.write_text(run_id)
    (workdir / "wandb").mkdir(parents=True, exist_ok=True)
    self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", "lm"), name=config.get("experiment") or None,
                           id=run_id, resume="allow", dir=str(workdir), config=config,
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

  def _warn(self, name: str, e: BaseException, what: str) -> None:
    text = str(e).strip()
    why = getattr(e, "strerror", None) or (text.splitlines()[0][:200] if text else type(e).__name__)
    sys.stderr.write(f"warning: tracker {name!r} {what} in {self.workdir} ({why}); training goes on without it\n")

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    record = {k: float(v) for k, v in metrics.items()}
    for name, tracker in list(self.trackers.items()):
      try:
        tracker.write(int(step), record)
      except Exception as e:  # pylint: disable=broad-except
        self._warn(name, e, "cannot write")
        self._close(name)

  def _close(self, name: str) -> None:
    tracker = self.trackers.pop(name)
    try:
      tracker.close()
    except Exception:  # pylint: disable=broad-except
      pass

  def close(self) -> None:
    for name in list(self.trackers):
      self._close(name)
