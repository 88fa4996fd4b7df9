"""Resume semantics in-process: corrupt steps fall back, changes a resume may not make fail in one line with the
fields named, safe ones are printed and recorded in the config history, a finished run says so and writes
nothing, a checkpoint is self-contained, and the numerics guard stops with the last good checkpoint intact."""

import json
import pathlib
import random
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import config as config_lib
from lm.data import corpus as corpus_lib, tokenizers
from lm.errors import CheckpointError, RunFinished
from lm.objectives.base import register
from lm.families.token.objectives import ntp
from lm.train import checkpoint, history, loop
from lm.train import run as run_lib


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  rng = random.Random(1)
  words = ["otter", "maple", "sleet", "cobalt", "ferry", "lantern", "of", "and", "the", "in"]
  for i in range(30):
    (d / f"{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(rng.randint(60, 160))) + ".\n")
  return d


def make_config(corpus, *overrides):
  c = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(c, [
      f"data.source={corpus}", "train.steps=30", "train.checkpoint_every=10", "train.log_every=1",
      "train.eval_every=0", "eval.max_batches=1", "data.val_fraction=0.2", "data.test_fraction=0.0",
      "data.seq_len=32", "data.batch_size=8", "model.d_model=32", "model.num_layers=1", "model.num_heads=2",
      "model.num_kv_heads=2", "model.d_ff=64", *overrides])
  return c


def losses(workdir):
  out = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    if "loss" in r:
      out[r["step"]] = r["loss"]
  return out


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("trained")
  loop.train(make_config(corpus), str(workdir))
  return workdir


def copy_run(trained, tmp_path):
  shutil.copytree(trained, tmp_path / "w")
  return tmp_path / "w"


@pytest.mark.parametrize("part", ["state", "data"])
def test_corrupt_newest_checkpoint_falls_back_with_a_warning(corpus, trained, tmp_path, capsys, part):
  workdir = copy_run(trained, tmp_path)
  files = [p for p in (workdir / "checkpoints" / "30" / part).rglob("*") if p.is_file()
           and (part == "data" or p.parent.name == "d")]
  assert files
  for p in files:  # truncated, as a crash of the storage layer would leave them
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
  loop.train(make_config(corpus), str(workdir))
  err = capsys.readouterr().err
  assert f"warning: checkpoint step 30 in {workdir} cannot be restored (" in err
  assert f"moved it to {workdir / 'corrupt-checkpoints'}/30-" in err
  assert len(list((workdir / "corrupt-checkpoints").glob("30-*"))) == 1  # kept, not deleted
  resumed, first = losses(workdir), losses(trained)
  assert {s: resumed[s] for s in range(21, 31)} == {s: first[s] for s in range(21, 31)}
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [10, 20, 30]


def test_a_changed_model_or_learning_rate_is_refused_with_the_fields_named(corpus, trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  before = {name: (workdir / name).read_bytes() for name in ("config.json", "config_history.jsonl")}
  for overrides, fields in [(("model.d_model=48", "model.num_layers=2"), "model.d_model: 32 -> 48; model.num_layers: 1 -> 2"),
                            (("optim.lr=1e-5", "train.steps=40"), "optim.lr: 0.004 -> 1e-05")]:
    with pytest.raises(CheckpointError) as e:
      loop.train(make_config(corpus, *overrides), str(workdir))
    assert str(e.value).startswith(f"cannot resume from checkpoint step 30 in {workdir} with {fields}: ")
    assert str(e.value).endswith("set these back or pass --restart to start over (old checkpoints are kept)")
  assert {name: (workdir / name).read_bytes() for name in before} == before  # the record is untouched
  assert not (workdir / "corrupt-checkpoints").exists()  # a mismatch is not corruption


def test_a_finished_run_says_so_and_changes_nothing(corpus, trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  with pytest.raises(RunFinished, match=rf"^run finished at step 30 in {workdir} \(train.steps=30\); raise "
                     r"--config.train.steps or use --restart"):
    loop.train(make_config(corpus, "train.log_every=5"), str(workdir))  # a safe change does not hide it
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_safe_changes_resume_are_printed_and_recorded(corpus, trained, tmp_path, capsys, monkeypatch):
  workdir = copy_run(trained, tmp_path)
  timed, add = [], loop.LogWindow.add

  def spy(self, step, step_metrics, timed_step=True):
    timed.append((step, timed_step))
    return add(self, step, step_metrics, timed_step)
  monkeypatch.setattr(loop.LogWindow, "add", spy)
  summary = loop.train(make_config(corpus, "train.steps=32", "model.remat_policy=full", "mesh.data=1"), str(workdir))
  assert timed == [(31, False), (32, True)]  # throughput leaves out the resumed run's first step
  out = capsys.readouterr().out
  assert summary["step"] == 32
  assert (f"resumed from step 30 in {workdir}, with\n  mesh.data: -1 -> 1\n  model.remat_policy: 'none' -> 'full'\n"
          "  train.steps: 30 -> 32\n") in out
  records = history.read(workdir)
  assert [(r["event"], r["step"]) for r in records] == [("start", 0), ("resume", 30)]
  assert records[1]["changes"]["train.steps"] == [30, 32] and records[1]["changes"]["mesh.data"] == [-1, 1]
  assert records[0]["config"]["train"]["steps"] == 30  # the past is kept as it was
  assert json.loads((workdir / "config.json").read_text()) == records[1]["config"]


def test_restart_moves_the_old_record_aside(corpus, trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  loop.move_aside(workdir)
  (previous,) = workdir.glob("previous-*")
  assert {"checkpoints", "metrics.jsonl", "config.json", "config_history.jsonl"} <= {p.name for p in previous.iterdir()}
  assert not (workdir / "config.json").exists() and not (workdir / "config_history.jsonl").exists()


def test_a_changed_tokenizer_is_refused_before_data_loads(corpus, tmp_path, monkeypatch):
  docs = [p.read_bytes() for p in sorted(corpus.iterdir())]
  paths = {}
  for size in (280, 300):
    paths[size] = tmp_path / f"bpe{size}.json"
    paths[size].write_bytes(tokenizers.train_bpe(docs, size).files()["tokenizer.json"])
  loop.train(make_config(corpus, "train.steps=10", f"data.tokenizer={paths[280]}"), str(tmp_path / "w"))
  monkeypatch.setattr(corpus_lib, "load_documents", lambda *a: pytest.fail("data loaded before the check"))
  with pytest.raises(CheckpointError, match=rf"with data.tokenizer: '{paths[280]}' -> '{paths[300]}': "):
    loop.train(make_config(corpus, "train.steps=20", f"data.tokenizer={paths[300]}"), str(tmp_path / "w"))


def test_a_checkpoint_is_self_contained(corpus, trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  saved_tok = tokenizers.load_tokenizer(workdir / "tokenizer")
  shutil.rmtree(workdir / "tokenizer")
  (workdir / "config.json").unlink()
  run, params = run_lib.restore_for_inference(workdir)
  config = run.config
  assert run.tokenizer.files() == saved_tok.files() and config.data.source == str(corpus)
  mngr = checkpoint.manager(workdir, read_only=True)
  meta = checkpoint.restore_meta(mngr, 30)
  assert meta["data"] == {"next_index": 30} and meta["config"]["model"]["d_model"] == 32
  assert not list(workdir.rglob("*.pkl")) and not list(workdir.rglob("*.pickle"))


def test_no_checkpoint_for_inference_names_the_workdir(tmp_path):
  with pytest.raises(CheckpointError, match=f"workdir '{tmp_path}' holds no checkpoint"):
    run_lib.restore_for_inference(tmp_path)


@register("test_nan_from_step_12")
def _nan_late():
  base = ntp()
  def loss(outputs, batch, ctx):
    terms = base(outputs, batch, ctx)
    return terms.replace(total=terms.total * jnp.where(ctx.step >= 12, jnp.nan, 1.0))
  return loss


def test_non_finite_streak_stops_with_the_last_good_checkpoint_intact(corpus, tmp_path):
  config = make_config(corpus, "train.max_nonfinite_steps=3")
  config.objectives = [dict(name="test_nan_from_step_12")]
  with pytest.raises(CheckpointError, match=r"3 non-finite steps in a row at step 15; stopped with the last "
                     r"good checkpoint \(step 10\) intact"):
    loop.train(config, str(tmp_path / "w"))
  logged = [json.loads(l) for l in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
  assert sum(r.get("skipped_steps", 0) for r in logged) >= 2  # counted in the metrics
  _, params = run_lib.restore_for_inference(tmp_path / "w")
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize("error", [
    OSError(5, "Input/output error"),
    ValueError("UNAVAILABLE: Error reading local file: connection reset"),
    ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 96.00GiB"),
    ValueError("Unsupported checkpoint metadata version 9"),
    MemoryError(),
])
def test_a_failed_restore_that_is_not_damage_moves_nothing_and_exits_non_zero(corpus, trained, tmp_path,
                                                                             monkeypatch, capsys, error):
  from lm import cli
  workdir = copy_run(trained, tmp_path)
  before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))

  def fail(*args, **kwargs):
    raise error
  monkeypatch.setattr(checkpoint, "restore_state", fail)
  argv = ["--workdir", str(workdir), f"--config.data.source={corpus}", "--config.train.steps=40",
          "--config.data.val_fraction=0.2", "--config.data.test_fraction=0.0", "--config.data.seq_len=32",
          "--config.data.batch_size=8", "--config.model.d_model=32", "--config.model.num_layers=1",
          "--config.model.num_heads=2", "--config.model.num_kv_heads=2", "--config.model.d_ff=64",
          "--config.train.checkpoint_every=10", "--config.train.eval_every=0", "--config.eval.max_batches=1"]
  assert cli.main(["train", "token_ntp:tiny", *argv]) == 2
  err = capsys.readouterr().err
  assert "error: reading checkpoint step 30 in" in err and "every step was left in place" in err
  log = workdir / "lm-errors.log"  # the details go to a log beside the run, not the terminal
  assert f"(details: {log})" in err and type(error).__name__ in log.read_text()
  assert sorted(p.relative_to(workdir) for p in workdir.rglob("*") if p != log) == before  # nothing else moved or written
  assert not (workdir / "corrupt-checkpoints").exists()


def test_a_workdir_whose_checkpoints_are_all_damaged_never_starts_over_silently(corpus, trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  for p in (workdir / "checkpoints").rglob("*"):
    if p.is_file() and p.parent.name == "d":
      p.write_bytes(b"")
  with pytest.raises(CheckpointError, match=r"no checkpoint in .* restores: step 30, 20, 10 cannot be read \(damaged "
                     r"steps are kept in .*corrupt-checkpoints\); pass --restart to start over"):
    loop.train(make_config(corpus, "train.steps=40"), str(workdir))
  assert len(list((workdir / "corrupt-checkpoints").glob("[0-9]*-*"))) == 3
  with pytest.raises(CheckpointError, match="every step it had was moved aside as damaged"):  # nor on a rerun
    loop.train(make_config(corpus, "train.steps=40"), str(workdir))
  loop.move_aside(workdir)  # --restart
  assert loop.train(make_config(corpus, "train.steps=2"), str(workdir))["step"] == 2


def test_inference_restores_params_only(corpus, trained, monkeypatch):
  mngr = checkpoint.manager(trained, read_only=True)
  meta = checkpoint.restore_meta(mngr, 30)
  full = checkpoint.restore_state(mngr, 30, run_lib.build_run(make_config(corpus), meta["tokenizer"]).abstract_state)
  monkeypatch.setattr(checkpoint, "restore_state", lambda *a, **k: pytest.fail("the whole state was read"))
  run, params = run_lib.restore_for_inference(trained)
  assert jax.tree.structure(params) == jax.tree.structure(full.params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(full.params)))
  assert all(x.sharding.is_equivalent_to(s, x.ndim)  # placed as the run's own layout says, not on one device
             for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(run.param_shardings)))
