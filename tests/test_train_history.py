"""The record of what a run trained with (`lm/train/history.py`): which fields a resume may change, how
changes are found, and a history that only grows."""

import json

from lm.train import history


def test_safe_fields_are_length_logging_eval_mesh_and_memory_knobs():
  for field in ("train.steps", "train.log_every", "train.trackers", "mesh.fsdp", "eval.batch_size",
                "model.remat_policy", "model.dtype", "train.grad_accum", "sample.prompt"):
    assert history.is_safe(field), field
  for field in ("optim.lr", "optim.warmup_steps", "data.source", "data.batch_size", "model.d_model",
                "model.param_dtype", "train.seed", "objectives", "meshy.data"):
    assert not history.is_safe(field), field


def test_changes_compare_through_json():
  saved = {"train": {"trackers": ["jsonl"], "steps": 10}, "optim": {"lr": 0.1}}
  current = {"train": {"trackers": ("jsonl",), "steps": 20}, "optim": {"lr": 0.1}, "new": {"x": 1}}
  assert history.changes(saved, current) == {"new.x": (None, 1), "train.steps": (10, 20)}
  assert history.describe("optim.lr", 0.001, 1e-05) == "optim.lr: 0.001 -> 1e-05"


def test_records_accumulate_and_a_broken_line_is_skipped(tmp_path, capsys):
  history.record(tmp_path, {"train": {"steps": 10}}, 0, None)
  history.record(tmp_path, {"train": {"steps": 20}}, 10, {"train.steps": (10, 20)})
  with (tmp_path / history.HISTORY).open("a") as f:
    f.write('{"step": 30, "truncat')  # a crash mid-write of some other tool
  records = history.read(tmp_path)
  assert [(r["event"], r["step"], r["changes"]) for r in records] == [
      ("start", 0, {}), ("resume", 10, {"train.steps": [10, 20]})]
  assert "line 3 is not JSON; skipped" in capsys.readouterr().err
  assert json.loads((tmp_path / history.CONFIG).read_text()) == {"train": {"steps": 20}}
  history.record(tmp_path, {"train": {"steps": 30}}, 20, {"train.steps": (20, 30)})
  assert [r["step"] for r in history.read(tmp_path)] == [0, 10, 20]
