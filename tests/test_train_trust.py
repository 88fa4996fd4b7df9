"""Hostile workdirs: a saved config naming outside code is refused (imported only with --trust-code), bytes
changed after a save are caught by the checksums (the previous step is used), and one writer per workdir
(a second `lm train` is refused naming the holder; the first finishes unharmed)."""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import lm
from lm import cli, families
from lm.errors import CheckpointError, ConfigError
from lm.train import checkpoint, lease, loop
from lm.train import run as run_lib
from test_train_checkpoint import copy_run, corpus, losses, make_config, trained  # noqa: F401  (fixtures)

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPECTED = json.loads((ROOT / "tests/data/pre_families/expected_bpb.json").read_text())

MARKER_MODULE = '''
import pathlib
pathlib.Path({marker!r}).write_text("imported")
from lm.families.token import FAMILY  # a family that works, so nothing but the marker tells code ran
'''


def _name_code(workdir: pathlib.Path, **fields) -> None:
  """Point every saved config of `workdir` at other code (`family=...`, `objective=...`)."""
  for meta in (workdir / "checkpoints").glob("*/config/metadata"):
    config = json.loads(meta.read_text())
    if "family" in fields:
      config["model"]["family"] = fields["family"]
    if "objective" in fields:
      config["objectives"][0]["name"] = fields["objective"]
    meta.write_text(json.dumps(config))


def test_a_workdir_naming_outside_code_runs_none_of_it_unless_trusted(old_run, tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(families, "_TRUST_ALL", False)  # restored after the test: `--trust-code` sets it
  mods, marker = tmp_path / "mods", tmp_path / "marker"
  mods.mkdir()
  (mods / "stealth_family.py").write_text(MARKER_MODULE.format(marker=str(marker)))
  (mods / "stealth_objective.py").write_text(MARKER_MODULE.format(marker=str(marker)))
  monkeypatch.syspath_prepend(str(mods))  # importable, as a module beside a downloaded workdir would be
  workdir = old_run("token_mtp")
  _name_code(workdir, family="stealth_family")
  with pytest.raises(ConfigError, match=r"names code outside lm \(model.family='stealth_family'\): loading it would "
                     r"import and run that module; if you trust whoever made it, pass --trust-code"):
    lm.load(str(workdir))
  assert cli.main(["eval", str(workdir)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: run ") and "--trust-code" in err[0]
  assert not marker.exists()  # refused before anything was imported

  other = tmp_path / "objective"
  shutil.copytree(ROOT / "tests/data/pre_families/token_mtp", other)
  _name_code(other, objective="stealth_objective.mtp2")
  with pytest.raises(ConfigError, match=r"objectives.0.name='stealth_objective.mtp2'"):
    lm.load(str(other))
  assert not marker.exists()

  r = lm.load(str(workdir), trust_code=True)  # the opt-in: the module is imported, and it works
  assert marker.exists() and r.evaluate()["bpb"] == pytest.approx(EXPECTED["token_mtp"], rel=1e-6)


def _resave_state(workdir: pathlib.Path, step: int, corpus_dir, change) -> None:
  """Rewrite step `step`'s arrays with `change(state)` applied, keeping the checksums recorded at its save:
  bytes that changed after the save yet still decode (what a flipped bit in an uncompressed chunk gives)."""
  mngr = checkpoint.manager(workdir, read_only=True)
  meta = checkpoint.restore_meta(mngr, step)
  abstract = run_lib.build_run(make_config(corpus_dir), meta["tokenizer"]).abstract_state
  state = change(checkpoint.restore_state(mngr, step, abstract))
  elsewhere = checkpoint.manager(workdir.parent / "resaved", keep=1)
  checkpoint.save(elsewhere, step, state, meta["data"], meta["config"], meta["tokenizer"])
  elsewhere.wait_until_finished()
  target = workdir / "checkpoints" / str(step) / "state"
  shutil.rmtree(target)
  shutil.copytree(workdir.parent / "resaved" / "checkpoints" / str(step) / "state", target)


def _flip_one_bit(tree, path: str):
  """`tree` with one bit of the first element of the leaf at `path` (as `checkpoint.leaf_shapes` names it)."""
  names = list(checkpoint.leaf_shapes(tree))
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  i = names.index(path)
  x = np.array(leaves[i])
  x.view(np.uint8).reshape(-1)[1] ^= 0x10
  leaves[i] = x
  return jax.tree_util.tree_unflatten(treedef, leaves)


@pytest.mark.parametrize("part", ["params/embed/embedding", "opt_state/1/0/mu/embed/embedding"])
def test_changed_bytes_are_caught_and_the_previous_step_is_used(corpus, trained, tmp_path, capsys, part):
  workdir = copy_run(trained, tmp_path)
  _resave_state(workdir, 30, corpus, lambda state: _flip_one_bit(state, part))
  restored = run_lib.restore_saved(workdir)  # lm eval / lm.load: params only
  err = capsys.readouterr().err
  if part.startswith("params/"):
    assert restored.step == 20 and f"warning: checkpoint step 30 in {workdir} cannot be restored (1 array(s) " \
        f"differ from the checksums recorded when it was saved ({part}))" in err
  else:  # inference never reads the optimizer state, so its damage cannot reach an evaluation
    assert restored.step == 30 and "warning" not in err
  loop.train(make_config(corpus, "train.steps=32"), str(workdir))  # the resume reads everything
  err = capsys.readouterr().err
  assert f"({part})); moved it to {workdir / 'corrupt-checkpoints'}/30-" in err
  resumed = losses(workdir)
  assert resumed[21] == losses(trained)[21]  # trained on from step 20, never from the damaged step
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())[-1] == 32


def test_a_lease_names_its_holder_and_a_gone_holder_is_taken_over(corpus, trained, tmp_path, capsys):
  workdir = copy_run(trained, tmp_path)
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    (workdir / lease.LEASE).write_text(json.dumps(dict(command="lm train other", host=socket.gethostname(),
                                                       pid=holder.pid, started=time.time(), renewed=time.time())))
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    with pytest.raises(CheckpointError, match=rf"^workdir '{workdir}' is being written by `lm train other` \(pid "
                       rf"{holder.pid} on host .*\): one writer per workdir; wait for it to finish or use another"):
      loop.train(make_config(corpus, "train.steps=32"), str(workdir))
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before  # nothing read-and-moved, nothing written
  finally:
    holder.kill()
    holder.wait()
  loop.train(make_config(corpus, "train.steps=31"), str(workdir))  # the holder is gone: taken over, and released
  assert f"warning: took over the lease of `lm train other` (pid {holder.pid}" in capsys.readouterr().err
  assert not (workdir / lease.LEASE).exists()


def test_a_second_writer_is_refused_and_the_first_finishes_unharmed(corpus, trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  args = ["--workdir", str(workdir), f"--config.data.source={corpus}", "--config.train.steps=60",
          "--config.data.val_fraction=0.2", "--config.data.test_fraction=0.0", "--config.data.seq_len=32",
          "--config.data.batch_size=8", "--config.model.d_model=32", "--config.model.num_layers=1",
          "--config.model.num_heads=2", "--config.model.num_kv_heads=2", "--config.model.d_ff=64",
          "--config.train.checkpoint_every=10", "--config.train.eval_every=0", "--config.eval.max_batches=1",
          "--config.train.log_every=1", "--config.sample.max_new=0"]
  first = subprocess.Popen([sys.executable, "-m", "lm", "train", "token_ntp:tiny", *args], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, JAX_PLATFORMS="cpu"))
  deadline = time.time() + 240
  while not (workdir / lease.LEASE).exists() and first.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  second = subprocess.run([sys.executable, "-m", "lm", "train", "token_ntp:tiny", *args,
                           "--config.train.steps=70"], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  out, err = first.communicate(timeout=300)
  assert second.returncode == 2 and second.stderr.strip().startswith(
      f"error: workdir '{workdir}' is being written by `lm train` (pid {first.pid} on host "), second.stderr
  assert first.returncode == 0, err
  assert "bpb: " in out and sorted(losses(workdir)) == list(range(1, 61))  # one run's steps, each once
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())[-1] == 60
  assert not (workdir / lease.LEASE).exists()
