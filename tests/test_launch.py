"""Launchers and multi-host setup: README's TPU/SLURM commands are what the launchers print; two local
processes (fake hosts over gloo) train to the same losses as one process; a failing process stops the run; a
killed launcher takes its processes with it; two processes of two devices each never hang."""

import email
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import launch
from launch import local, slurm, tpu
from lm import cli, parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A small fixed corpus (the standard library's email package, ~360 KB in 20 files) needs no extraction.
SOURCE = os.path.join(os.path.dirname(email.__file__), "*.py")
TINY = [f"--config.data.source={SOURCE}", "--config.data.val_fraction=0.25", "--config.data.test_fraction=0",
        "--config.train.steps=4", "--config.train.log_every=1", "--config.train.eval_every=0",
        "--config.train.checkpoint_every=0", "--config.data.seq_len=32", "--config.data.batch_size=4",
        "--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.d_ff=64",
        "--config.train.eval_batches=1", "--config.eval.max_batches=1", "--config.sample.max_new=0"]


def _env():
  # Unoptimised XLA code compiles ~7x faster here (the PRNG-heavy init dominates a tiny run); every run in
  # this file uses the same flags, so their losses stay comparable.
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  return dict(env, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")


def _readme_blocks() -> list[str]:
  return re.findall(r"```[a-z]*\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _readme_example(prefix: str) -> tuple[list[str], str]:
  """README's `lm launch ... --dry-run` block starting with `prefix` (as argv) and the block after it."""
  blocks = _readme_blocks()
  i = next(i for i, b in enumerate(blocks) if b.startswith(prefix) and "--dry-run" in b)
  argv = shlex.split(blocks[i].replace("\\\n", " "))
  assert argv[0] == "lm"
  return argv[1:], blocks[i + 1]


@pytest.mark.parametrize("target", ["tpu", "slurm"])
def test_dry_run_prints_what_readme_documents(target, capsys):
  argv, expected = _readme_example(f"lm launch {target} ")
  assert cli.main(argv) == 0
  assert capsys.readouterr().out == expected


def test_tpu_commands_run_the_same_train_command_on_every_worker():
  argv = launch.train_argv("token_ntp:tiny", "gs://b/r", ["sample.prompt=It was"], restart=True)
  install, run = tpu.commands("pod", "zone-a", None, argv, repo="https://x/lm.git", ref="v1")
  assert install[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone", "zone-a", "--worker=all"]
  assert shlex.split(install[-1])[-1] == "lm[gcs] @ git+https://x/lm.git@v1"  # gs:// workdirs need gcsfs
  assert shlex.split(run[-1]) == ["lm-venv/bin/python", "-m", "lm", "train", "token_ntp:tiny", "--workdir", "gs://b/r",
                                  "--config.sample.prompt=It was", "--restart"]
  # The printed line is a shell command that gives back the same argv, however the values are quoted.
  assert shlex.split(tpu.render(run)) == run
  weird = tpu.ssh("pod", "z", "p", tpu.run_command(["train", 'say "$HOME"']))
  assert shlex.split(tpu.render(weird)) == weird
  assert tpu.commands("pod", "zone-a", None, argv, install=False) == [run]
  with pytest.raises(Exception, match="--repo"):
    tpu.commands("pod", "z", None, argv)


def test_slurm_script_and_missing_sbatch(tmp_path, capsys, monkeypatch):
  text = slurm.script(["train", "x"], 1, 4, "job", "out-%j.log", account="acct", python="/venv/bin/python")
  assert "#SBATCH --account=acct\n" in text
  assert text.endswith("srun --kill-on-bad-exit=1 /venv/bin/python -m lm train x\n")
  monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
  workdir = tmp_path / "w"
  err = _error(capsys, "launch", "slurm", "--nodes", "1", "--gpus-per-node", "2", "token_ntp:tiny",
               "--workdir", str(workdir))
  assert "sbatch is not on PATH" in err and str(workdir / "launch.sbatch") in err
  assert "#SBATCH --gpus-per-node=2" in (workdir / "launch.sbatch").read_text()


def _error(capsys, *argv):
  assert cli.main(list(argv)) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err, err
  return err


def test_inconsistent_process_flags_fail_with_one_line(capsys, tmp_path):
  w = ["token_ntp:tiny", "--workdir", str(tmp_path / "w")]
  assert "also needs --coordinator and --num-processes" in _error(capsys, "train", *w, "--process-id", "1")
  assert "outside [0, 2)" in _error(capsys, "train", *w, "--coordinator", "h:1", "--num-processes", "2",
                                    "--process-id", "2")
  assert "not HOST:PORT" in _error(capsys, "train", *w, "--coordinator", "h", "--num-processes", "2",
                                   "--process-id", "0")
  # The launcher checks the config before starting anything.
  assert "did you mean config.train.steps" in _error(capsys, "launch", "local", "--processes", "2", *w,
                                                     "--config.train.stepz=3")


def test_cluster_detection_from_environment():
  slurm_env = dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="n[1-2]", SLURM_NTASKS="16", SLURM_PROCID="3",
                   SLURM_LOCALID="3")
  assert parallel.detect_cluster(slurm_env, tpu_vm=False) == "slurm"
  assert parallel.detect_cluster(dict(slurm_env, SLURM_NTASKS="1"), tpu_vm=False) is None
  assert parallel.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, tpu_vm=False) is None  # salloc
  assert parallel.detect_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}, tpu_vm=False) == "tpu"
  assert parallel.detect_cluster({}, tpu_vm=True) == "tpu"
  assert parallel.detect_cluster({"TPU_SKIP_MDS_QUERY": "1"}, tpu_vm=True) is None
  assert parallel.detect_cluster({}, tpu_vm=False) is None


def test_process_rows_takes_this_process_block(monkeypatch):
  batch = {"inputs": np.arange(12).reshape(6, 2)}
  assert parallel.process_rows(batch) is batch
  monkeypatch.setattr(parallel.jax, "process_count", lambda: 3)
  monkeypatch.setattr(parallel.jax, "process_index", lambda: 1)
  np.testing.assert_array_equal(parallel.process_rows(batch)["inputs"], batch["inputs"][2:4])
  with pytest.raises(Exception, match="multiple of 3"):
    parallel.process_rows({"inputs": np.zeros((4, 2))})


def test_local_environment_and_commands():
  env = local.environment({"XLA_FLAGS": "--a=1 --xla_force_host_platform_device_count=8"}, 2)
  assert env["XLA_FLAGS"] == "--a=1 --xla_force_host_platform_device_count=2" and env["JAX_PLATFORMS"] == "cpu"
  assert local.environment({"XLA_FLAGS": "--b", "JAX_PLATFORMS": "cuda"})["XLA_FLAGS"] == "--b"
  assert local.environment({"JAX_PLATFORMS": "cuda"})["JAX_PLATFORMS"] == "cuda"
  cmds = local.commands(["train", "x"], 2, 1234, python="py")
  assert cmds[1] == ["py", "-m", "lm", "train", "x", "--coordinator", "127.0.0.1:1234", "--num-processes", "2",
                     "--process-id", "1"]


def test_one_failing_process_stops_the_others():
  hang = [sys.executable, "-c", "import time; print('waiting', flush=True); time.sleep(60)"]
  fail = [sys.executable, "-c", "import sys, time; time.sleep(0.5); print('bad'); sys.exit(3)"]
  out = _Lines()
  t0 = time.time()
  assert local.run([hang, fail], out=out, grace=2.0) == 3
  assert time.time() - t0 < 20
  assert "[0] waiting" in out.lines and "[1] bad" in out.lines


class _Lines:
  def __init__(self):
    self.lines = []

  def write(self, text):
    self.lines += text.splitlines()

  def flush(self):
    pass


def _losses(workdir) -> list[float]:
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in records if "loss" in r]
  assert [r["step"] for r in logged] == [1, 2, 3, 4]  # each step once: process 1 wrote nothing
  return [r["loss"] for r in logged]


def test_two_local_processes_train_like_one(tmp_path):
  multi, single = tmp_path / "multi", tmp_path / "single"
  env = _env()
  launched = subprocess.run(
      [sys.executable, "-m", "lm", "launch", "local", "--processes", "2", "--devices-per-process", "1",
       "token_ntp:tiny", "--workdir", str(multi), *TINY],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, timeout=300)
  out = launched.stdout
  # One after the other: run beside the launched pair, it slowed all three more than it overlapped.
  ref = subprocess.run([sys.executable, "-m", "lm", "train", "token_ntp:tiny", "--workdir", str(single), *TINY],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert ref.returncode == 0, ref.stdout + ref.stderr
  assert launched.returncode == 0, out
  lines = out.splitlines()
  assert any(l.startswith("[0] process 0 of 2") for l in lines) and any(l.startswith("[1] process 1 of 2")
                                                                         for l in lines), out
  assert any(l.startswith("[0] bpb: ") for l in lines) and not any(l.startswith("[1] bpb") for l in lines)
  assert all(re.match(r"\[[01]\] ", l) for l in lines if l and not l.startswith("[launch]")), out
  np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5)
  assert len(list((multi / "tensorboard").iterdir())) == 1
  assert (multi / "checkpoints" / "4").is_dir()
  evals = [json.loads((w / "eval_val.json").read_text()) for w in (multi, single)]
  assert evals[0]["n_bytes"] == evals[1]["n_bytes"] > 0
  np.testing.assert_allclose(evals[0]["bpb"], evals[1]["bpb"], rtol=1e-5)


def _launch_local(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", "lm", "launch", "local", "--processes", "2", *TINY, *args],
                        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=timeout)


def test_launcher_returns_nonzero_when_every_process_fails(tmp_path):
  proc = _launch_local("token_ntp:tiny", "--workdir", str(tmp_path / "w"),
                       f"--config.data.source={tmp_path / 'missing.txt'}")
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "[0] error: " in proc.stdout and "does not exist" in proc.stdout and "[launch] process" in proc.stderr


def test_launcher_stops_the_others_when_one_process_fails(tmp_path):
  # Only process 0 creates the workdir, so only it fails; process 1 would wait for it forever.
  (tmp_path / "file").write_text("")
  t0 = time.time()
  proc = _launch_local("token_ntp:tiny", "--workdir", str(tmp_path / "file" / "w"))
  assert proc.returncode != 0 and time.time() - t0 < 60, proc.stdout + proc.stderr
  assert "[0] error: workdir" in proc.stdout and "[launch] process" in proc.stderr


def test_preempting_the_launcher_saves_every_process_at_one_step_and_resumes(tmp_path):
  """SIGTERM to the launcher (a scheduler's preemption): it forwards one SIGTERM, jax's preemption service
  makes both processes save at the same step, everyone exits 0, and the same command resumes."""
  args = ["token_ntp:tiny", "--workdir", str(tmp_path / "w"), *TINY, "--config.train.steps=100000"]
  proc = subprocess.Popen([sys.executable, "-m", "lm", "launch", "local", "--processes", "2", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("[0] step 5/"):
      proc.send_signal(signal.SIGTERM)
      break
  lines.extend(proc.stdout)
  out = "".join(lines)
  assert proc.wait(timeout=120) == 0, out
  assert "[launch] SIGTERM: asking every process to save and exit" in out
  saved = re.search(r"\[0\] preempted: saved step (\d+) in ", out)
  assert saved, out
  step = int(saved.group(1))
  assert [p.name for p in (tmp_path / "w" / "checkpoints").iterdir()] == [str(step)]
  resumed = _launch_local(*args[:-1], f"--config.train.steps={step + 2}")
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f"[0] resumed from step {step} in " in resumed.stdout


# The command of issue 15 (two processes of two CPU devices each, the tiny experiment as a new user runs it)
# with 2 steps instead of 10 and an eval at step 1: it still reaches a training eval and the end-of-training
# eval over every held-out batch (about 40, more than the 32 computations XLA's CPU client keeps in flight
# per device), where it hung after its last step (2 of 3 runs reported, 4 of 4 here) before evaluation bounded
# how many steps it dispatches ahead (`lm.eval.bpb.IN_FLIGHT`).
REPORTED = ["token_ntp:tiny", "--config.train.steps=2", "--config.train.log_every=1",
            "--config.train.eval_every=1", "--config.mesh.data=-1"]


@pytest.mark.slow
def test_two_processes_of_two_devices_finish_every_time(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # exactly the user's flags: optimised XLA code
  # Before the fix the hang came in 4 of 4 runs (BUILD_NOTES, issue 15): three runs catch it coming back.
  for i in range(3):
    t0 = time.time()
    # The first run is the reported command as is, and also decodes its end-of-training sample on the params
    # sharded over both processes. The rest skip the sample and use a one-layer model (the hang was in
    # evaluation, whose dispatch pattern does not depend on the model; faster steps only queue more): 25 s a
    # run instead of 48 s here.
    sample = (["--config.sample.max_new=20"] if i == 0 else
              ["--config.sample.max_new=0", "--config.model.num_layers=1", "--config.model.d_model=32",
               "--config.model.d_ff=64", "--config.model.num_heads=2", "--config.model.num_kv_heads=2"])
    try:
      proc = subprocess.run([sys.executable, "-m", "lm", "launch", "local", "--processes", "2", *REPORTED, *sample,
                             "--workdir", str(tmp_path / str(i))],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            timeout=240)  # kills the launcher, and so (parent-death signal) its processes
    except subprocess.TimeoutExpired as e:
      pytest.fail(f"run {i} hung for {time.time() - t0:.0f}s:\n{e.output}")
    assert proc.returncode == 0, f"run {i}:\n{proc.stdout}"
    assert "[0] step 1: val_bpb " in proc.stdout and "[0] bpb: " in proc.stdout, proc.stdout
    assert ("[0] sample: The " in proc.stdout) == (i == 0), proc.stdout


def _stat(pid: int) -> list[str] | None:
  """/proc/PID/stat's fields after the command name (state, ppid, ..., start time at [19]); None when gone."""
  try:
    text = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return None
  return text[text.rindex(")") + 2:].split()


def _children(pid: int) -> dict[int, str]:
  """The live children of `pid`, each with its start time (so a reused pid is not mistaken for it)."""
  found = {}
  for entry in pathlib.Path("/proc").iterdir():
    stat = _stat(int(entry.name)) if entry.name.isdigit() else None
    if stat and int(stat[1]) == pid:
      found[int(entry.name)] = stat[19]
  return found


def _alive(pid: int, start: str) -> bool:
  stat = _stat(pid)
  return stat is not None and stat[19] == start and stat[0] != "Z"  # a zombie is dead, only not yet reaped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_killing_the_launcher_kills_its_processes(tmp_path):
  """SIGKILL (or `timeout -k` after its SIGTERM) gives the launcher no chance to stop its processes, which
  run in their own sessions: the kernel's parent-death signal must."""
  args = ["token_ntp:tiny", "--workdir", str(tmp_path / "w"), *TINY, "--config.train.steps=100000"]
  proc = subprocess.Popen([sys.executable, "-m", "lm", "launch", "local", "--processes", "2", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT)
  children = {}
  try:
    lines = []
    for line in proc.stdout:
      lines.append(line)
      if line.startswith("[0] step 2/"):
        break
    children = _children(proc.pid)
    assert len(children) == 2, "".join(lines)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.time() + 5
    while any(_alive(*c) for c in children.items()) and time.time() < deadline:
      time.sleep(0.05)
    assert not any(_alive(*c) for c in children.items()), "the launcher's processes outlived it"
  finally:
    proc.kill()
    proc.stdout.close()
    for pid, start in children.items():
      if _alive(pid, start):
        os.kill(pid, signal.SIGKILL)
