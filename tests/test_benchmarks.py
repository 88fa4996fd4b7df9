"""Smoke test: the training-throughput benchmark runs in --quick mode and writes the JSON it promises."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

EXPECTED_KEYS = {
    "shape", "backend", "tokens_per_s", "step_ms", "mfu", "matmul_peak_flops", "train_flops_per_step",
    "hand_step_ms", "overhead_ratio", "rolled_step_ms", "rolled_over_unrolled", "compile_s",
    "rolled_compile_ratio", "unrolled_compile_ratio",
}


def test_train_throughput_quick(tmp_path):
  out = tmp_path / "train_throughput.json"
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--quick",
                         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert EXPECTED_KEYS <= set(result), EXPECTED_KEYS - set(result)
  assert result["tokens_per_s"] > 0 and result["hand_step_ms"] > 0 and 0 < result["mfu"] < 2
  assert set(result["compile_s"]) == {"rolled_1", "rolled_2", "unrolled_1", "unrolled_2"}
  assert "tokens/s" in proc.stdout or "tok/s" in proc.stdout


def test_speculative_quick(tmp_path):
  out = tmp_path / "speculative.json"
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speculative.py"), "--quick", "--out", str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert result["identical_outputs"] == result["prompts"] == 4
  assert result["plain_passes_per_unit"] == 1.0 and 0 < result["spec_passes_per_unit"] <= 1.0
  assert "accepted units per pass" in proc.stdout


@pytest.mark.slow
def test_accelerator_check_quick(tmp_path):
  """The script for GPU/TPU days runs here too: the kernel in interpret mode, a tiny training run."""
  out = tmp_path / "accelerator_check.json"
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accelerator_check.py"), "--quick", "--out",
                         str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  f32 = [r for r in result["kernels"] if r["dtype"] == "float32"]
  assert f32 and all(max(r["out"], r["dq"], r["dk"], r["dv"]) < 1e-4 for r in f32)
  assert result["training"]["tokens_per_s"] > 0 and result["training"]["compile_s"] > 0


def _reproduce():
  """benchmarks/reproduce.py as a module (benchmarks/ is not a package)."""
  sys.path.insert(0, str(ROOT / "benchmarks"))
  try:
    import reproduce  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(str(ROOT / "benchmarks"))
  return reproduce


def test_reproduce_arms_are_the_experiments_objectives():
  reproduce = _reproduce()
  # Every arm of every part is one objectives list, taken from experiments/token_ARM.py.
  assert reproduce.objectives_of("top") == [dict(name="ntp", weight=1.0), dict(name="top", weight=1.0, window=16)]
  assert reproduce.objectives_of("mtp:n=2")[0]["n"] == 2 and reproduce.objectives_of("mtp")[0]["n"] == 4
  config = reproduce.make_config("probe_star:tiny", "mtp", seed=2, steps=7)
  assert config.objectives == reproduce.objectives_of("mtp") and config.train.seed == 2 and config.train.steps == 7
  with pytest.raises(SystemExit, match="no experiments/token_nope.py"):
    reproduce.main(["--parts", "star", "--star-arms", "ntp,nope"])
  with pytest.raises(SystemExit, match="unknown nope"):
    reproduce.main(["--parts", "star,nope"])
  # HAT arms: a named shape plus overrides, on byte_hat's data and optimizer; unknown names before any run.
  config = reproduce.hat_config("hat_b256x4:model.num_layers=5", "tiny", seed=1)
  assert (config.model.d_model, config.model.num_layers, config.model.encoder.d_model) == (256, 5, 64)
  assert config.train.seed == 1 and config.data.eval_max_bytes == 120 and config.model.family == "hierarchical"
  with pytest.raises(SystemExit, match="unknown arm 'nope'"):
    reproduce.main(["--parts", "hat", "--hat-arms", "flat,nope"])


def test_reproduce_json_keeps_earlier_parts(tmp_path):
  reproduce = _reproduce()
  out = tmp_path / "r.json"
  save = reproduce._save  # pylint: disable=protected-access
  save(str(out), {"star": dict(variant="small", arms={"ntp": dict(seeds=[0, 1]), "mtp": dict(seeds=[0])})})
  save(str(out), {"bpb": dict(variant="small", arms={"ntp": dict(seeds=[0])})})
  save(str(out), {"star": dict(variant="small", arms={"mtp": dict(seeds=[2])})})  # one arm measured again
  parts = json.loads(out.read_text())["parts"]
  assert parts == {"star": dict(variant="small", arms={"ntp": dict(seeds=[0, 1]), "mtp": dict(seeds=[2])}),
                   "bpb": dict(variant="small", arms={"ntp": dict(seeds=[0])})}


def test_reproduce_add_seeds(tmp_path):
  reproduce = _reproduce()
  out = tmp_path / "r.json"
  settings = dict(variant="tiny", steps_flag=5, probe_n=16, quick=True)
  stats = reproduce.protocol.summary

  def row(seeds, later, seconds):
    return dict(settings, seeds=seeds, later=stats(later), seconds=seconds, date="d")

  save = reproduce._save  # pylint: disable=protected-access
  save(str(out), {"induction": dict(variant="tiny", arms={"ntp": row([0, 1], [0.5, 0.7], 10.0)})})
  curve = [dict(step=5, later=0.4), dict(step=10, later=0.9)]
  save(str(out), {"induction": dict(variant="tiny", arms={"ntp": dict(row([2], [0.9], 5.0), curves=[curve])})},
       add_seeds=True)
  ntp = json.loads(out.read_text())["parts"]["induction"]["arms"]["ntp"]
  assert ntp["seeds"] == [0, 1, 2] and ntp["later"]["values"] == [0.5, 0.7, 0.9] and ntp["seconds"] == 15.0
  assert ntp["curves"] == [[], [], curve]  # a learning curve stays with its seed
  assert ntp["later"]["mean"] == pytest.approx(0.7) and ntp["later"]["std"] == pytest.approx(0.2)
  # Refused before any training: a seed already there, or other settings than the recorded arm's.
  args = ["--parts", "induction", "--induction-arms", "ntp", "--induction-variant", "tiny", "--quick", "--out",
          str(out), "--add-seeds"]
  with pytest.raises(SystemExit, match=r"already has seed\(s\) \[1\]"):
    reproduce.main([*args, "--seeds", "1,3"])
  with pytest.raises(SystemExit, match="measured with probe_n 16 != 400"):
    reproduce.main([*args, "--seeds", "3", "--n", "400"])
  with pytest.raises(SystemExit, match="only the probe parts"):
    reproduce.main(["--parts", "hat", "--curve", "3"])
