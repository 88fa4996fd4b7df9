"""The Python API (`lm/api.py`): `lm.load` and `lm.build`, and README's notebook lines as written there."""

import json
import pathlib
import re

import pytest

import lm
from lm.errors import CheckpointError, ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/data/pre_families"


def _readme_blocks() -> list[str]:
  text = (ROOT / "README.md").read_text()
  section = text[text.index("## Python API"):]
  section = section[: section.index("\n## ", 5)]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_notebook_lines_work_as_written(old_run, tmp_path, monkeypatch, capsys):
  old_run("token_mtp").rename(tmp_path / "runs/ntp_tiny")
  monkeypatch.chdir(tmp_path)
  load, build = _readme_blocks()
  scope: dict = {}
  exec(load, scope)  # pylint: disable=exec-used
  printed = capsys.readouterr().out.splitlines()
  want = json.loads((FIXTURES / "expected_bpb.json").read_text())["token_mtp"]
  assert float(printed[0]) == want  # the checkpoint of the code before the family restructure, same bpb
  assert scope["config"].model.dtype == "float32" and "mtp_head" in scope["params"]
  exec(build, scope)  # pylint: disable=exec-used
  r, outputs = scope["r"], scope["outputs"]
  assert r.config.model.d_model == 64 and r.params["embed"]["embedding"].shape == (264, 64)
  assert outputs.logits.shape == (2, 64, 264)


def test_load_evaluates_and_samples_like_the_cli(old_run, tmp_path):
  r = lm.load(str(old_run("byte_hat")))
  assert r.step == 3 and r.config.model.family == "hierarchical"
  result = r.evaluate()
  # The checkpoint of the code before the family restructure scores as it did then, up to float32 rounding:
  # issue 13 rewrote RoPE, attention and the gated MLP in equivalent forms (5e-8 relative here).
  assert result["bpb"] == pytest.approx(json.loads((FIXTURES / "expected_bpb.json").read_text())["byte_hat"], rel=1e-6)
  assert {"flops_per_byte_train", "flops_per_byte_encoder_forward", "split", "data"} <= set(result)
  text = b"A short note. It has two sentences, and a third one follows. Here it is.\n"
  (tmp_path / "notes.txt").write_bytes(text)
  other = r.evaluate(data=str(tmp_path / "notes.txt"))
  segments = r.data.eval_segments([text])
  assert len(segments) > 1 and other["n_bytes"] == len(text) + len(segments) and other["data"].endswith("notes.txt")
  greedy = r.sample("The ", max_new=10, temperature=0.0)
  assert greedy == r.sample("The ", max_new=10, temperature=0.0) and len(greedy.encode()) <= 10


def test_build_is_a_callable_untrained_run():
  r = lm.build("concept_sllm:tiny", seed=1, **{"model.d_model": 32, "model.num_heads": 2, "model.num_kv_heads": 2})
  assert r.config.model.scan_unroll == r.config.model.num_layers  # `auto` settings resolved for this backend
  batch = r.example_batch(1)
  outputs = r(batch)
  assert outputs.logits.shape == batch["targets"].shape + (264,)  # 259 bytes and specials + end, padded to 8
  assert r.params["backbone_start"].shape == (32,) and "encoder_slot" in r.params


def test_api_errors_are_one_line(tmp_path):
  with pytest.raises(CheckpointError, match="holds no checkpoint"):
    lm.load(str(tmp_path))
  with pytest.raises(ConfigError, match="unknown config key config.model.d_modle; did you mean config.model.d_model"):
    lm.build("token_ntp:tiny", **{"model.d_modle": 64})
