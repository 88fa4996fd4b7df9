"""A Cloud TPU pod: install the package on every worker, then start `lm train` on all of them at once.

Both steps are `gcloud compute tpus tpu-vm ssh NAME --worker=all --command "..."`. The workers need no
coordinator flags: jax finds its peers from the TPU VM's metadata (`lm.parallel.detect_cluster`).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess

from lm.errors import LMError

_DOUBLE_QUOTE_SPECIAL = set('"$`\\!')
# jax >= 0.10 needs Python >= 3.11, newer than the python3 of TPU VM images (3.10 on Ubuntu 22.04), so the
# package goes into a uv-made virtual environment, relative to the home directory where `ssh` starts.
VENV = "lm-venv"
PYTHON_VERSION = "3.12"


def _quote(command: str) -> str:
  """Double quotes when that is safe, so the inner command's own single quotes stay readable."""
  if not set(command) & _DOUBLE_QUOTE_SPECIAL:
    return f'"{command}"'
  return shlex.quote(command)


def ssh(name: str, zone: str, project: str | None, command: str) -> list[str]:
  """`gcloud compute tpus tpu-vm ssh NAME --zone ZONE [--project P] --worker=all --command CMD`, as argv."""
  argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, "--zone", zone]
  if project:
    argv += ["--project", project]
  return argv + ["--worker=all", "--command", command]


def install_command(repo: str, ref: str) -> str:
  """uv, a Python new enough for jax, and jax for TPU plus the package at `repo@ref` (a git URL) with its
  `gcs` extra: a pod's workdir is a gs:// bucket, which etils.epath reaches through gcsfs."""
  uv = ".local/bin/uv"  # where uv's installer puts it
  return " && ".join([
      "curl -LsSf https://astral.sh/uv/install.sh | sh",
      shlex.join([uv, "venv", "--python", PYTHON_VERSION, "--allow-existing", VENV]),
      shlex.join([uv, "pip", "install", "--python", f"{VENV}/bin/python", "-U", "jax[tpu]",
                  f"lm[gcs] @ git+{repo}@{ref}"]),
  ])


def run_command(train_argv: list[str]) -> str:
  return shlex.join([f"{VENV}/bin/python", "-m", "lm", *train_argv])


def commands(name: str, zone: str, project: str | None, train_argv: list[str], repo: str | None = None,
             ref: str = "main", install: bool = True) -> list[list[str]]:
  """The install command (unless `install=False`) and the run command."""
  if install and not repo:
    raise LMError("lm launch tpu needs --repo GIT_URL (cloned by every worker) to install the package, or "
                  "--skip-install when it is installed already")
  cmds = [ssh(name, zone, project, install_command(repo, ref))] if install else []
  return cmds + [ssh(name, zone, project, run_command(train_argv))]


def render(argv: list[str]) -> str:
  """One command as a shell line (what `--dry-run` prints and README shows)."""
  *head, command = argv
  return f"{shlex.join(head)} {_quote(command)}"


def launch(cmds: list[list[str]], dry_run: bool = False) -> int:
  """Print (`dry_run`) or run the commands in order, stopping at the first that fails."""
  if dry_run:
    for argv in cmds:
      print(render(argv))
    return 0
  if shutil.which("gcloud") is None:
    raise LMError("gcloud is not on PATH; install the Google Cloud CLI, or add --dry-run to print the commands")
  for argv in cmds:
    print(f"+ {render(argv)}", flush=True)
    rc = subprocess.call(argv)
    if rc:
      return rc
  return 0
