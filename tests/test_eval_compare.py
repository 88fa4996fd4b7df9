"""`lm compare` (`lm/eval/compare.py`): one row per run from what its training and evaluation wrote."""

import json

import pytest

import lm
from lm.errors import CheckpointError, LMError
from lm.eval import compare
from lm.train import checkpoint


def test_rows_read_the_logged_flops_and_the_evaluations(old_run, tmp_path):
  w = old_run("concept_lcm")
  with pytest.raises(LMError, match=r"no eval_val.json with FLOPs per byte \(flops_per_byte_train\); run `lm eval"):
    compare.summarize_run(w)
  result = lm.load(str(w)).evaluate()
  checkpoint.write_json(w / "eval_val.json", result)
  records = [dict(step=1, loss=5.0, train_flops=1e6, bytes_per_sec=10.0),
             dict(step=2, val_bpb=4.0), dict(step=3, loss=4.0, train_flops=3e6, bytes_per_sec=30.0)]
  (w / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  row = compare.summarize_run(w)
  assert row["family"] == "concept" and row["step"] == 3 and row["train_flops"] == 3e6
  assert row["val_bpb"] == result["bpb"] and row["test_bpb"] is None and row["oracle_bpb"] == result["oracle_bpb"]
  assert row["curve"] == [(2e6, 4.0), (3e6, result["bpb"])] and row["bytes_per_sec"] == 30.0
  params = sum(x.size for x in __import__("jax").tree.leaves(lm.load(str(w)).params))
  assert row["params"] == params
  lines = compare.table([row]).splitlines()
  assert lines[0].split()[:3] == ["run", "family", "params"] and "concept" in lines[1] and "-" in lines[1]
  compare.plot([row], str(tmp_path / "plot.png"))
  assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_a_workdir_without_checkpoints_is_one_line(tmp_path):
  with pytest.raises(CheckpointError, match="holds no checkpoint; train it first"):
    compare.summarize_run(tmp_path)
