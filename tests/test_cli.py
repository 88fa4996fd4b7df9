"""The command line end to end: train, eval, sample, list, and one-line errors for bad input."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from lm import cli

SHORT = ["--config.train.steps=6", "--config.train.log_every=2", "--config.train.eval_every=3",
         "--config.train.checkpoint_every=3", "--config.data.seq_len=32", "--config.data.batch_size=4",
         "--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.d_ff=64",
         "--config.train.eval_batches=2", "--config.eval.max_batches=3", "--config.sample.max_new=8"]


ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_lm(*args, check=True, cwd=None):
  proc = subprocess.run([sys.executable, "-m", "lm", *args], capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=cwd)
  if check:
    assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  cwd = tmp_path_factory.mktemp("run")
  # A relative workdir, as README writes it: orbax needs absolute paths, the CLI must not.
  proc = run_lm("train", f"--config={ROOT / 'experiments' / 'token_ntp.py'}:tiny", "--workdir", "w", *SHORT,
                cwd=cwd)
  return cwd / "w", proc


def test_train_writes_metrics_checkpoints_and_prints_bpb_and_sample(trained):
  workdir, proc = trained
  assert "bpb: " in proc.stdout and "sample: " in proc.stdout
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in records if "loss" in r]
  assert [r["step"] for r in logged] == [2, 4, 6]
  assert all(r["tokens_per_sec"] > 0 and r["loss"] > 0 for r in logged)
  assert any("val_bpb" in r for r in records)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
  assert list((workdir / "tensorboard").iterdir())
  assert json.loads((workdir / "config.json").read_text())["model"]["d_model"] == 32


def test_eval_prints_bpb_and_writes_json(trained, tmp_path):
  workdir, _ = trained
  for split in ("val", "test"):
    proc = run_lm("eval", str(workdir), "--split", split)
    assert proc.stdout.startswith("bpb: ")
    result = json.loads((workdir / f"eval_{split}.json").read_text())
    assert {"bpb", "n_bytes", "nll_sum"} <= set(result) and result["n_bytes"] > 0
  text = tmp_path / "other.txt"
  text.write_text("A different text, scored with the run's own tokenizer.\n" * 3)
  proc = run_lm("eval", str(workdir), "--data", str(text))
  result = json.loads(proc.stdout.splitlines()[1])
  from lm.data.segment import cut_segments
  segments = cut_segments(text.read_bytes(), 31)  # seq_len - 1 bytes at most; each adds one end event
  assert result["n_bytes"] == len(text.read_bytes()) + len(segments)


def test_sample_continues_the_prompt(trained):
  workdir, _ = trained
  proc = run_lm("sample", "w", "--prompt", "The", "--max-new", "10", "--temperature", "0", cwd=workdir.parent)
  assert proc.stdout.startswith("The")
  again = run_lm("sample", str(workdir), "--prompt", "The", "--max-new", "10", "--temperature", "0")
  assert again.stdout == proc.stdout


def test_list_prints_experiments():
  proc = run_lm("list")
  assert any(line.startswith("token_ntp") and "Next-token" in line for line in proc.stdout.splitlines())


def _error(capsys, *argv):
  assert cli.main(list(argv)) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err, err
  return err


def test_bad_input_fails_with_one_line(capsys, tmp_path):
  w = str(tmp_path / "w")
  assert "did you mean config.train.steps" in _error(capsys, "train", "token_ntp:tiny", "--workdir", w,
                                                     "--config.train.stepz=3")
  assert "did you mean 'token_ntp'" in _error(capsys, "train", "token_nt", "--workdir", w)
  assert "does not exist" in _error(capsys, "train", "token_ntp:tiny", "--workdir", w,
                                    f"--config.data.source={tmp_path / 'missing.txt'}")
  empty = tmp_path / "empty.txt"
  empty.write_bytes(b"")
  assert "empty" in _error(capsys, "train", "token_ntp:tiny", "--workdir", w, f"--config.data.source={empty}")
  assert "wordpiece" in _error(capsys, "train", "token_ntp:tiny", "--workdir", w,
                               "--config.data.tokenizer=wordpiece")
  blocker = tmp_path / "a-file"
  blocker.write_text("")
  assert "not writable" in _error(capsys, "train", "token_ntp:tiny", "--workdir", str(blocker / "w"),
                                  "--config.train.steps=1")
  assert "holds no checkpoint" in _error(capsys, "eval", str(tmp_path / "nothing"))
  assert "holds no checkpoint" in _error(capsys, "sample", str(tmp_path / "nothing"), "--prompt", "x")


def test_corpus_too_small_for_one_batch(capsys, tmp_path):
  small = tmp_path / "small.txt"
  small.write_text("Just one short line of text.")
  err = _error(capsys, "train", "token_ntp:tiny", "--workdir", str(tmp_path / "w"),
               f"--config.data.source={small}", "--config.data.val_fraction=0", "--config.data.test_fraction=0")
  assert "fewer than one batch" in err


def test_eval_on_noised_text(trained):
  workdir, _ = trained
  clean = json.loads(run_lm("eval", str(workdir), "--split", "val").stdout.strip().splitlines()[-1])
  proc = run_lm("eval", str(workdir), "--noise", "swap:0.3")
  noised = json.loads(proc.stdout.strip().splitlines()[-1])
  assert noised["n_bytes"] == clean["n_bytes"] and noised["bpb"] != clean["bpb"]
  assert (workdir / "eval_val_noise-swap-0.3.json").exists()
  bad = run_lm("eval", str(workdir), "--noise", "blur:0.1", check=False)
  assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --noise 'blur:0.1': expected KIND:RATE")


def test_compare_prints_a_table_and_draws_bpb_against_flops(trained, tmp_path):
  workdir, _ = trained
  proc = run_lm("compare", str(workdir), str(workdir), "-o", str(tmp_path / "report.png"), "--json",
                str(tmp_path / "report.json"))
  lines = proc.stdout.strip().splitlines()
  assert lines[0].split()[:3] == ["run", "family", "params"] and len(lines) >= 3
  rows = json.loads((tmp_path / "report.json").read_text())
  evaluated = json.loads((workdir / "eval_val.json").read_text())
  assert rows[0]["val_bpb"] == evaluated["bpb"] and rows[0]["family"] == "token" and rows[0]["train_flops"] > 0
  assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
  missing = run_lm("compare", str(tmp_path / "nothing"), check=False)
  assert missing.returncode == 2 and "holds no checkpoint" in missing.stderr
