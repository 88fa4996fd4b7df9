"""A SLURM GPU cluster: an sbatch script that starts one `lm train` process per GPU with `srun`.

No coordinator flags: jax reads the job step from SLURM's variables (`lm.parallel.detect_cluster`) and gives
each process the GPU numbered by its SLURM_LOCALID.
"""

from __future__ import annotations

import pathlib
import shlex
import shutil
import subprocess

from lm.errors import LMError


def script(train_argv: list[str], nodes: int, gpus_per_node: int, job_name: str, output: str,
           partition: str | None = None, time: str | None = None, account: str | None = None,
           python: str = "python") -> str:
  """The sbatch script: `nodes` x `gpus_per_node` tasks, one GPU each; one failed task ends them all
  (the others would wait for it in a collective until the job's time runs out)."""
  if nodes < 1 or gpus_per_node < 1:
    raise LMError(f"--nodes {nodes} and --gpus-per-node {gpus_per_node} must both be at least 1")
  if "://" in output:
    raise LMError(f"--output {output} must be a path on the cluster's own filesystem: SLURM writes the log there")
  lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --nodes={nodes}",
           f"#SBATCH --ntasks-per-node={gpus_per_node}", f"#SBATCH --gpus-per-node={gpus_per_node}",
           f"#SBATCH --output={output}"]
  for key, value in (("partition", partition), ("time", time), ("account", account)):
    if value:
      lines.append(f"#SBATCH --{key}={value}")
  lines += ["set -euo pipefail", shlex.join(["srun", "--kill-on-bad-exit=1", python, "-m", "lm", *train_argv])]
  return "\n".join(lines) + "\n"


def default_output(workdir: str) -> str:
  """WORKDIR/slurm-%j.out (%j: SLURM's job id); for a gs:// workdir, which SLURM cannot write to, slurm-%j.out
  in the directory sbatch runs in."""
  if "://" in workdir:
    return "slurm-%j.out"
  return f"{workdir.rstrip('/')}/slurm-%j.out"


def launch(text: str, workdir: str, output: str, dry_run: bool = False) -> int:
  """Print the script (`dry_run`), or write it to WORKDIR/launch.sbatch (for a gs:// workdir, ./launch.sbatch:
  sbatch reads a local file) and submit it with sbatch."""
  if dry_run:
    print(text, end="")
    return 0
  path = pathlib.Path("launch.sbatch" if "://" in workdir else pathlib.Path(workdir) / "launch.sbatch")
  path.parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(output).parent.mkdir(parents=True, exist_ok=True)  # SLURM does not create --output's folder
  path.write_text(text)
  if shutil.which("sbatch") is None:
    raise LMError(f"sbatch is not on PATH; the script is written to {path}: submit it from a SLURM login "
                  f"node with `sbatch {path}`")
  return subprocess.call(["sbatch", str(path)])
