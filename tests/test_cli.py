"""The command line end to end: train, eval, sample, list, config, help and version, one-line errors for bad
input, and a finished run re-run with a changed setting."""

import json
import os
import pathlib
import re
import shutil
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
  # A relative workdir, as README writes it: orbax needs absolute paths, the CLI must not. Two XLA:CPU
  # devices whatever the cores (a data mesh, as `mesh.cpu_devices=0` makes on a multi-core CPU); eval,
  # sample and compare below restore its checkpoints onto one.
  proc = run_lm("train", f"--config={ROOT / 'experiments' / 'token_ntp.py'}:tiny", "--workdir", "w", *SHORT,
                "--config.mesh.cpu_devices=2", cwd=cwd)
  return cwd / "w", proc


def test_train_writes_metrics_checkpoints_and_prints_bpb_and_sample(trained):
  workdir, proc = trained
  assert "bpb: " in proc.stdout and "sample: " in proc.stdout
  assert "mesh {'data': 2, 'fsdp': 1, 'tensor': 1}, 2 cpu devices" in proc.stdout
  assert "compiling train step...\ncompiling train step: " in proc.stdout  # a log file gets two lines
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


def test_bare_lm_help_and_version(capsys):
  assert cli.main([]) == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: lm ") and all(f"    {c} " in out for c in ("train", "eval", "config", "list"))
  for argv, want in ((["--help"], "usage: lm "), (["--version"], "lm 0.1.0\n")):
    with pytest.raises(SystemExit) as e:
      cli.main(argv)
    assert e.value.code == 0 and capsys.readouterr().out.startswith(want)


def test_train_help_shows_the_override_syntax_and_the_sections(capsys):
  with pytest.raises(SystemExit):
    cli.main(["train", "--help"])
  out = capsys.readouterr().out
  assert "--config.SECTION.FIELD=VALUE" in out and "--config.objectives.N.OPTION=VALUE" in out
  assert "\n  optim: b1, b2, clip_norm, eps, lr," in out and "\n  mesh: cpu_devices, data, fsdp, tensor\n" in out


def test_config_prints_an_experiment_resolved(capsys):
  assert cli.main(["config", "byte_hat:tiny", "--config.optim.lr=1e-3", "--config.model.encoder.num_layers=3"]) == 0
  config = json.loads(capsys.readouterr().out)
  assert config["experiment"] == "byte_hat:tiny" and config["optim"]["lr"] == 1e-3
  assert config["model"]["family"] == "hierarchical" and config["model"]["encoder"]["num_layers"] == 3
  assert _error(capsys, "config", "token_ntp:tiny", "--config.zzz=1") == (
      "error: unknown config key config.zzz; `lm config EXPERIMENT` prints every key")


def test_rerunning_a_finished_run_never_rewrites_its_record(trained, tmp_path, capsys):
  workdir = tmp_path / "w"
  shutil.copytree(trained[0], workdir)
  record = {name: (workdir / name).read_bytes() for name in ("config.json", "config_history.jsonl")}
  args = ["train", "token_ntp:tiny", "--workdir", str(workdir), *SHORT, "--config.mesh.cpu_devices=2"]
  assert _error(capsys, *args, "--config.optim.lr=1e-5").startswith(
      f"error: cannot resume from checkpoint step 6 in {workdir} with optim.lr: 0.004 -> 1e-05: ")
  assert _error(capsys, *args) == (f"error: run finished at step 6 in {workdir} (train.steps=6); raise "
                                   "--config.train.steps or use --restart (`lm eval` scores it)")
  assert {name: (workdir / name).read_bytes() for name in record} == record
  # Training on is a safe change: printed, applied and recorded, and `lm config DIR` shows the history.
  assert cli.main([*args, "--config.train.steps=8", "--config.train.trackers=jsonl", "--config.sample.max_new=0"]) == 0
  out = capsys.readouterr().out
  assert f"resumed from step 6 in {workdir}, with\n" in out and "  train.steps: 6 -> 8\n" in out
  assert "  train.trackers: ['jsonl', 'tensorboard'] -> ['jsonl']\n" in out
  assert cli.main(["config", str(workdir)]) == 0
  out = capsys.readouterr().out
  config, _, past = out.partition("\nhistory (config_history.jsonl):\n")
  assert json.loads(config)["train"]["steps"] == 8
  lines = past.splitlines()
  assert len(lines) == 2 and lines[0].startswith("  step 0: start at ") and lines[1].startswith("  step 6: resume at ")
  assert lines[1].endswith(": sample.max_new: 8 -> 0; train.steps: 6 -> 8; train.trackers: ['jsonl', "
                           "'tensorboard'] -> ['jsonl']")


def test_restart_with_a_bad_config_keeps_the_old_run_in_place(trained, tmp_path, capsys):
  workdir = tmp_path / "w"
  shutil.copytree(trained[0], workdir)
  assert "does not divide the 1 device present" in _error(
      capsys, "train", "token_ntp:tiny", "--workdir", str(workdir), *SHORT, "--restart", "--config.mesh.tensor=2")
  assert (workdir / "checkpoints").exists() and not list(workdir.glob("previous-*"))
  assert "takes no --config overrides" in _error(capsys, "config", str(workdir), "--config.train.steps=3")


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
  assert "is not a directory" in _error(capsys, "train", "token_ntp:tiny", "--workdir", str(blocker / "w"),
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
  from lm.eval import compare  # --flops data: the data-position count the loop logged beside the executed one
  data = compare.summarize_run(workdir, flops="data")
  logged = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if "train_flops_data" in l]
  assert data["flops"] == "data" and data["flops_per_byte_train"] == evaluated["flops_per_byte_data"]
  assert data["train_flops"] == pytest.approx(data["step"] * logged[-1]["train_flops_data"] / logged[-1]["step"])
  assert data["train_flops"] <= rows[0]["train_flops"]
  missing = run_lm("compare", str(tmp_path / "nothing"), check=False)
  assert missing.returncode == 2 and "holds no checkpoint" in missing.stderr


def test_sample_method_smc_prints_a_continuation_that_matches(trained):
  workdir, _ = trained
  proc = run_lm("sample", str(workdir), "--prompt", "The", "--max-new", "8", "--method", "smc", "--regex",
                "[a-z ]{2,6}", "--particles", "8")
  lines = proc.stdout.splitlines()
  assert lines[0].startswith("The") and re.fullmatch("[a-z ]{2,6}", lines[0][3:]), proc.stdout
  assert len([line for line in lines if re.match(r"[* ] +\d+ \| log p", line)]) == 8
  assert lines[-1].startswith("smc: forward_passes 8, rows 8, alpha 1") and "log_z" in lines[-1]


def test_decode_methods_report_the_models_own_log_probs(trained):
  """Each method's outputs carry log p equal to teacher forcing the same units (rollout.score)."""
  import jax.numpy as jnp
  import numpy as np
  import lm
  from lm.decoding import rollout
  workdir, _ = trained
  r = lm.load(str(workdir))
  prompt = r.tokenizer.prompt_ids("The")
  for method, options in (("beam", dict(beams=3, length_penalty=0.0)), ("diverse-beam", dict(beams=4, groups=2)),
                          ("power", dict(blocks=2, mh_steps=2)), ("power-smc", dict(particles=4, ramp=3)),
                          ("mbr", dict(samples=4, utility="chrf"))):
    report = r.decode("The", method, max_new=6, **options)
    assert 0 <= report["chosen"] < len(report["outputs"]) and report["stats"]["forward_passes"] > 1
    for out in report["outputs"]:
      units = np.array(out["units"], np.int32)
      want = rollout.score(r.run.model, r.params, jnp.asarray(prompt)[None], jnp.array([len(prompt)]),
                           jnp.asarray(units)[None], jnp.array([len(units)]))
      assert abs(float(want.sum()) - out["log_p"]) < 1e-3, (method, out)
    if method == "beam":  # best first, by log p with no length penalty
      assert [o["log_p"] for o in report["outputs"]] == sorted((o["log_p"] for o in report["outputs"]), reverse=True)
  from lm.errors import LMError
  with pytest.raises(LMError, match="unknown decoding option"):
    r.decode("The", "beam", beam=3)


USER_METHOD = """
import jax.numpy as jnp

from lm.decoding import methods, rollout


@methods.register("mymethods.longest", options=[methods.Option("tries", int, 3, "samples to draw")],
                  check=lambda o: None if o.tries >= 1 else methods._at_least(o, 1, "tries"))
def longest(ctx, o):
  ids, logp, n = rollout.sample(ctx.model, ctx.params, ctx.ids, ctx.lengths, ctx.rng, max_new=o.max_new,
                                temperature=1.0, stop_ids=jnp.array([ctx.tokenizer.eos_id]), group=o.tries)
  texts = ctx.texts(ids, n)
  chosen = max(range(len(texts)), key=lambda i: len(texts[i][1]))
  return dict(outputs=[dict(text=t, units=u, log_p=float(lp)) for (t, u), lp in zip(texts, logp.sum(1))],
              chosen=chosen, stats=dict(forward_passes=o.max_new, rows=o.tries))
"""


def test_a_user_decoding_method_from_its_own_module(trained, capsys, tmp_path, monkeypatch):
  """A method registered by a module outside lm: its flags on the command line, its options in lm.load."""
  import lm
  (tmp_path / "mymethods.py").write_text(USER_METHOD)
  monkeypatch.syspath_prepend(str(tmp_path))
  workdir = str(trained[0])
  assert cli.main(["sample", workdir, "--prompt", "The", "--max-new", "5", "--method", "mymethods.longest",
                   "--tries", "2"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith("The") and len(out) == 4 and out[-1].startswith("mymethods.longest: forward_passes 5")
  report = lm.load(workdir).decode("The", "mymethods.longest", tries=3, max_new=4)
  assert report["method"] == "mymethods.longest" and len(report["outputs"]) == 3
  assert max(len(o["units"]) for o in report["outputs"]) == len(report["outputs"][report["chosen"]]["units"])
  assert "--beams does not apply to --method mymethods.longest (it reads --tries)" in _error(
      capsys, "sample", workdir, "--method", "mymethods.longest", "--beams", "2")
  assert "--tries must be at least 1" in _error(capsys, "sample", workdir, "--method", "mymethods.longest",
                                                "--tries", "0")


USER_FORMAT = """
from lm.data import sources


@sources.register_format("myformat.lines")
def lines(part):
  with open(part.split(":", 1)[1], "rb") as f:
    yield from (line.strip() for line in f if line.strip())
"""


def test_a_user_data_format_from_its_own_module(tmp_path, monkeypatch, capsys):
  """`data.source=myformat.lines:PATH` imports the user's module, which registers the format: it trains and
  evaluates; a process that has not imported that module refuses the saved run without --trust-code."""
  import lm
  (tmp_path / "myformat.py").write_text(USER_FORMAT)
  monkeypatch.syspath_prepend(str(tmp_path))
  words = "river stone light quiet seven paper north glass among under".split()
  (tmp_path / "lines.txt").write_text("\n".join(" ".join(words[(i + k) % 10] for k in range(12)) for i in range(300)))
  w = str(tmp_path / "w")
  assert cli.main(["train", "token_ntp:tiny", "--workdir", w, f"--config.data.source=myformat.lines:{tmp_path}/lines.txt",
                   *SHORT]) == 0
  assert "bpb: " in capsys.readouterr().out
  assert 0 < lm.load(w).evaluate()["bpb"] < 9
  proc = subprocess.run([sys.executable, "-c", f"import lm; lm.load({w!r})"], capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(tmp_path)), timeout=300)
  assert proc.returncode != 0 and "data.source='myformat.lines'" in proc.stderr and "--trust-code" in proc.stderr
  assert "no format 'nopkg.nothing'" in _error(capsys, "train", "token_ntp:tiny", "--workdir", str(tmp_path / "x"),
                                               "--config.data.source=nopkg.nothing:a")


def test_sample_method_bad_input_is_one_line(trained, capsys):
  workdir = str(trained[0])
  assert "needs --regex" in _error(capsys, "sample", workdir, "--method", "smc")
  assert "not one of" in _error(capsys, "sample", workdir, "--method", "nope")
  assert "drop --speculative" in _error(capsys, "sample", workdir, "--method", "beam", "--top-k", "3")
  assert "equal blocks" in _error(capsys, "sample", workdir, "--method", "power", "--max-new", "10", "--blocks", "3")
  assert "lookahead" in _error(capsys, "sample", workdir, "--method", "smc", "--regex", "a(?=b)")
  assert "--max-new is 4" in _error(capsys, "sample", workdir, "--method", "smc", "--regex", "x{40}", "--max-new", "4")
  assert "--alpha does not apply to --method beam" in _error(capsys, "sample", workdir, "--method", "beam", "--alpha", "2")
  assert "must be positive" in _error(capsys, "sample", workdir, "--method", "mbr", "--temperature", "0")
  assert "--ramp counts units" in _error(capsys, "sample", workdir, "--method", "power-smc", "--ramp", "-1")


def test_eval_byte_exact_prints_both_bits_per_byte(trained):
  workdir, _ = trained
  proc = run_lm("eval", str(workdir), "--byte-exact", "--segments", "2")
  assert proc.stdout.startswith("bpb: ") and "byte-exact" in proc.stdout
  result = json.loads(proc.stdout.splitlines()[1])
  assert abs(result["gap_bpb"]) < 1e-6 and result["segments"] == 2  # bytes: one tokenization (float32 rows)
  assert json.loads((workdir / "eval_val_byte_exact.json").read_text())["byte_exact_bpb"] == result["byte_exact_bpb"]
