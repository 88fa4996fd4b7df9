"""Trackers (`lm/train/trackers.py`) and the progress lines (`lm/train/metrics.py`): JSON lines, TensorBoard
and W&B (offline) behind one interface, a failing tracker costing itself but not the run, names checked
before a run starts."""

import io
import json
import struct
import sys

import pytest
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem

from lm.errors import ConfigError
from lm.train import metrics, trackers


def test_jsonl_records_have_the_step_and_are_appended(tmp_path):
  t = trackers.Trackers(("jsonl", "tensorboard"), tmp_path, {})
  t.write(1, {"loss": 2.5, "bpb": 3})
  t.close()
  t = trackers.Trackers(("jsonl",), tmp_path, {}, start_step=1)  # a resumed run appends
  t.write(2, {"loss": 2.0})
  t.close()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines == [{"step": 1, "loss": 2.5, "bpb": 3.0}, {"step": 2, "loss": 2.0}]
  assert _scalars(tmp_path / "tensorboard") == [(1, "loss", 2.5), (1, "bpb", 3.0)]


def _scalars(directory):
  """(step, tag, value) of every scalar in a directory's event files, read with tensorboardX's own protobuf
  classes and checksums (TFRecord framing: length, masked crc32c, data, masked crc32c)."""
  from tensorboardX.proto import event_pb2
  from tensorboardX.record_writer import masked_crc32c
  out = []
  for path in sorted(directory.iterdir()):
    assert path.name.startswith("events.out.tfevents.")
    data, i, versions = path.read_bytes(), 0, []
    while i < len(data):
      n = struct.unpack("<Q", data[i:i + 8])[0]
      assert struct.unpack("<I", data[i + 8:i + 12])[0] == masked_crc32c(data[i:i + 8])
      body = data[i + 12:i + 12 + n]
      assert struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] == masked_crc32c(body)
      event = event_pb2.Event.FromString(body)
      versions += [event.file_version] if event.file_version else []
      out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
      i += 12 + n + 4
    assert versions == ["brain.Event:2"]
  return out


class ObjectStore(MemoryFileSystem):
  """An in-memory `gs://` that, like an object store, has no append: gcsfs opens "a" as "w", which would
  silently drop every earlier record, so here it fails loudly instead."""

  protocol = ("gs", "gcs")
  store, pseudo_dirs = {}, [""]

  @classmethod
  def _strip_protocol(cls, path):
    return "/" + str(path).split("://", 1)[-1].strip("/")

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode:
      raise OSError(f"append ({mode!r}) to {path}: objects are written whole")
    return super()._open(path, mode, **kwargs)


@pytest.fixture
def object_store(monkeypatch):
  """`gs://` served by `ObjectStore` for etils.epath (whose fsspec backend caches its filesystems)."""
  from etils.epath import backend
  ObjectStore.store.clear()
  for name in ObjectStore.protocol:  # the module's own table (`fsspec.registry` is a read-only view of it)
    monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, name, ObjectStore)
  backend.fsspec_backend._get_filesystem.cache_clear()
  yield ObjectStore.store
  backend.fsspec_backend._get_filesystem.cache_clear()


def test_remote_trackers_rewrite_whole_files_and_keep_records_across_a_resume(object_store, monkeypatch):
  workdir = epath.Path("gs://bucket/w")
  monkeypatch.setattr(trackers, "REMOTE_FLUSH_SECONDS", 3600.0)
  t = trackers.Trackers(("jsonl", "tensorboard"), workdir, {})
  t.write(1, {"loss": 2.5, "bpb": 3})
  assert not (workdir / "metrics.jsonl").exists()  # buffered within the flush window...
  t.close()  # ...and uploaded whole at the end
  monkeypatch.setattr(trackers, "REMOTE_FLUSH_SECONDS", 0.0)
  t = trackers.Trackers(("jsonl", "tensorboard"), workdir, {}, start_step=1)  # a resume reads the records back
  t.write(2, {"loss": 2.0})
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert records == [{"step": 1, "loss": 2.5, "bpb": 3.0}, {"step": 2, "loss": 2.0}]  # each window flushed
  t.write(3, {"loss": 1.5})
  t.close()
  assert t.trackers == {}
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2, 3]
  # One event file per flush window, each a complete TFRecord file that TensorBoard reads in name order.
  assert len(list((workdir / "tensorboard").iterdir())) == 3
  assert _scalars(workdir / "tensorboard") == [(1, "loss", 2.5), (1, "bpb", 3.0), (2, "loss", 2.0), (3, "loss", 1.5)]


def test_a_remote_tracker_that_cannot_upload_at_close_says_so(object_store, monkeypatch, capsys):
  monkeypatch.setattr(trackers, "REMOTE_FLUSH_SECONDS", 3600.0)
  t = trackers.Trackers(("jsonl",), "gs://bucket/w", {})
  t.write(1, {"loss": 1.0})
  monkeypatch.setattr(ObjectStore, "_open", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "bucket gone")))
  t.close()
  assert capsys.readouterr().err == ("warning: tracker 'jsonl' cannot close in gs://bucket/w (bucket gone); its last "
                                     "records may be missing\n")


def test_crc32c_matches_the_standard_check_value():
  assert trackers.crc32c(b"123456789") == 0xE3069283 and trackers.crc32c(b"") == 0


def test_other_processes_write_nothing(tmp_path):
  t = trackers.Trackers(("jsonl", "tensorboard"), tmp_path / "w", {}, enabled=False)
  t.write(1, {"loss": 1.0})
  t.close()
  assert not (tmp_path / "w").exists()


class Full(trackers.Tracker):
  def write(self, step, metrics):
    raise OSError(28, "No space left on device")


class Collect(trackers.Tracker):
  records = []

  def __init__(self, workdir, config, start_step):
    super().__init__(workdir, config, start_step)
    Collect.records.append(("start", start_step, config.get("experiment")))

  def write(self, step, metrics):
    Collect.records.append((step, metrics))


def test_a_failing_tracker_warns_once_and_the_others_go_on(tmp_path, capsys):
  Collect.records = []
  t = trackers.Trackers((f"{__name__}.Full", f"{__name__}.Collect"), tmp_path, {"experiment": "x"}, start_step=5)
  t.write(6, {"loss": 1.0})
  t.write(7, {"loss": 0.5})
  err = capsys.readouterr().err
  assert err.count("warning: tracker") == 1 and "No space left on device" in err
  assert f"{__name__}.Full" not in t.trackers
  assert Collect.records == [("start", 5, "x"), (6, {"loss": 1.0}), (7, {"loss": 0.5})]


def test_tracker_names_are_a_list_of_distinct_names():
  with pytest.raises(ConfigError, match="train.trackers names 'jsonl' twice; list each tracker once"):
    trackers.check(("jsonl", "tensorboard", "jsonl"))
  with pytest.raises(ConfigError, match="must be a list of names"):
    trackers.check("jsonl")
  trackers.check(())  # none at all is allowed: --config.train.trackers=


@pytest.mark.parametrize("name, message", [
    ("tensorbord", "unknown tracker 'tensorbord'; did you mean 'tensorboard'? choose from jsonl, tensorboard, wandb"),
    ("mlflow", "unknown tracker 'mlflow'; choose from"),
    ("json.JSONDecoder", "unknown tracker 'json.JSONDecoder'"),
])
def test_unknown_trackers_fail_in_one_line(name, message):
  with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
    trackers.check((name,))


def test_a_tracker_whose_package_is_missing_names_the_install(monkeypatch):
  monkeypatch.setattr(trackers.Wandb, "requires", ("no_such_module_xyz",))
  with pytest.raises(ConfigError, match=r"train.trackers includes 'wandb' but no_such_module_xyz is not installed; "
                     r"pip install -e '.\[wandb\]'"):
    trackers.check(("jsonl", "wandb"))


def test_wandb_offline_logs_and_a_resume_continues_the_same_run(tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  t = trackers.Trackers(("wandb",), tmp_path, {"experiment": "token_ntp:tiny", "optim": {"lr": 0.1}})
  t.write(1, {"loss": 2.0})
  t.close()
  run_id = (tmp_path / "wandb_id").read_text()
  t = trackers.Trackers(("wandb",), tmp_path, {"experiment": "token_ntp:tiny"}, start_step=1)
  t.write(2, {"loss": 1.0})
  t.close()
  assert not t.trackers and (tmp_path / "wandb_id").read_text() == run_id
  runs = [p for p in (tmp_path / "wandb").iterdir() if p.name.startswith("offline-run-")]
  assert runs and all(run_id in p.name for p in runs)  # two sessions in one second get a "-1" suffix
  assert all(any(f.suffix == ".wandb" for f in p.iterdir()) for p in runs)


def test_progress_line(capsys):
  p = metrics.Progress(100)
  p.update(10, {"loss": 2.0, "bpb": 3.0, "tokens_per_sec": 12_300.0})
  assert capsys.readouterr().out.strip() == "step 10/100 | loss 2.0000 | bpb 3.0000 | 12.3k tok/s | eta ?"
  assert metrics.Progress(100, enabled=False).update(10, {}) is None and capsys.readouterr().out == ""


def test_phase_line_in_a_log_and_on_a_terminal():
  log = io.StringIO()
  with metrics.Phase("compiling train step", stream=log) as phase:
    pass
  assert log.getvalue() == f"compiling train step...\ncompiling train step: {phase.seconds:.1f}s\n"

  class Tty(io.StringIO):
    def isatty(self):
      return True
  tty = Tty()
  with metrics.Phase("compiling train step", stream=tty) as phase:
    import time
    deadline = time.time() + 30
    while "\r" not in tty.getvalue() and time.time() < deadline:  # until the live counter ticks once
      time.sleep(0.05)
  out = tty.getvalue()
  assert out.startswith("compiling train step...\rcompiling train step... ") and "s\r" in out
  assert out.endswith(f"\rcompiling train step: {phase.seconds:.1f}s\n") and "\n" not in out[:-1]
