"""RESULTS.md is what benchmarks/results/*.json generate, and --check says so when it is not."""

import json
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
try:
  import results  # noqa: E402  # benchmarks/ is not a package
finally:
  sys.path.remove(str(ROOT / "benchmarks"))


def test_results_md_is_generated_from_the_json():
  assert results.generate() == (ROOT / "RESULTS.md").read_text(), "run python benchmarks/results.py"
  assert results.main(["--check"]) == 0


def test_check_fails_on_changed_json_and_skips_unknown_files(tmp_path, capsys):
  for p in results.RESULTS.glob("*.json"):
    shutil.copy(p, tmp_path)
  data = json.loads((tmp_path / "objectives.json").read_text())
  data["objectives"]["ntp"]["bpb"]["values"][0] += 0.5
  (tmp_path / "objectives.json").write_text(json.dumps(data))
  assert results.main(["--results", str(tmp_path), "--check"]) == 1
  assert capsys.readouterr().out.strip().endswith("in section 'objectives.json': run python benchmarks/results.py")
  # A benchmark the generator has no section for yet: a note line, nothing else.
  (tmp_path / "new_bench.json").write_text(json.dumps(dict(settings={}, results={"x": 1})))
  assert "- new_bench.json: no section in benchmarks/results.py; skipped" in results.generate(tmp_path)
  # A known benchmark's file in a shape its section cannot read: that section says so, the others stand.
  (tmp_path / "rl_new.json").write_text(json.dumps(dict(runs={"a/0": {"seed": 0}})))
  text = results.generate(tmp_path)
  assert "rl() failed with KeyError" in text and "## sequence_sampling.json" in text


def test_record_shaped_files_read_like_older_ones(tmp_path):
  """A file written by protocol.record (settings and results apart, commit and command) reads the same."""
  old = json.loads((results.RESULTS / "objectives.json").read_text())
  settings = {k: old[k] for k in ("variant", "seeds", "steps", "probe_n", "quick")}
  new = dict(commit="0123456789abcdef", dirty=False, command="python benchmarks/objectives.py",
             machine=dict(platform="Linux", cpu_count=2, backend="cpu", devices=["cpu"], jax="0.10.2"),
             date="2026-12-07T00:00:00+00:00", settings=settings,
             results=dict(objectives=old["objectives"], skipped=[], seconds=1.0))
  (tmp_path / "objectives.json").write_text(json.dumps(new))
  text = results.generate(tmp_path)
  assert "commit `0123456789`; date 2026-12-07T00:00:00+00:00; command `python benchmarks/objectives.py`" in text
  rows = lambda text: [line for line in results.sections(text)["objectives.json"].splitlines()  # noqa: E731
                        if line.startswith("| ")]
  assert rows(text) and rows(text) == rows(results.generate())


def test_rl_reads_the_test_split_where_recorded(tmp_path):
  """rl.py's runs keep the test split before and after RL beside the dev curve: the tables use it; a run that
  recorded only the curve (older rl.py) is read from the curve's first and last points, and says so."""
  text = results.sections(results.generate())["rl_arith.json"]
  assert "- start and end: the test split, before and after RL" in text and "- grpo: lr 1e-05 (" in text
  new = json.loads((results.RESULTS / "rl_arith.json").read_text())
  runs = {k: {f: v for f, v in dict(r, curve=r["test"]).items() if f != "test"} for k, r in new["results"]["runs"].items()}
  (tmp_path / "rl_arith.json").write_text(json.dumps(dict(new, results=dict(new["results"], runs=runs))))
  curve = results.sections(results.generate(tmp_path))["rl_arith.json"]
  assert "- start and end: the first and last points of the held-out eval curve" in curve
  rows = lambda text: [line for line in text.splitlines() if line.startswith("| ")]  # noqa: E731
  assert rows(curve) == rows(text)
