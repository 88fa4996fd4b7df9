"""N `lm train` processes on this host joined by a loopback coordinator: fake hosts for testing multi-host.

Each process is one jax process with its own devices (CPU devices by default, collectives over gloo), so the
multi-host code paths (per-process data shards, global arrays, process-0-only logs, orbax across processes)
run exactly as on a pod. Output lines are prefixed `[i] `; the first process to fail stops the others, and on
Linux the processes die with the launcher however it ends (SIGKILL included).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Mapping, TextIO

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def free_port() -> int:
  """A loopback port nothing listens on now (the OS picks it; free again once the socket closes)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def commands(train_argv: list[str], processes: int, port: int, python: str = sys.executable) -> list[list[str]]:
  """One `python -m lm train ... --coordinator 127.0.0.1:PORT --num-processes N --process-id I` per process."""
  return [[python, "-m", "lm", *train_argv, "--coordinator", f"127.0.0.1:{port}", "--num-processes",
           str(processes), "--process-id", str(i)] for i in range(processes)]


def environment(base: Mapping[str, str], devices_per_process: int | None = None) -> dict[str, str]:
  """The processes' environment: CPU unless JAX_PLATFORMS says otherwise, K fake devices each if asked.

  Without `devices_per_process` the user's XLA_FLAGS are kept as they are (one CPU device when unset).
  """
  env = dict(base)
  env.setdefault("JAX_PLATFORMS", "cpu")
  env["PYTHONUNBUFFERED"] = "1"  # lines reach the prefixer as they are printed, not when a buffer fills
  if devices_per_process is not None:
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    env["XLA_FLAGS"] = " ".join([*flags, f"{DEVICE_COUNT_FLAG}={devices_per_process}"])
  return env


def die_with_parent() -> Callable[[], None] | None:
  """A `preexec_fn` that has the kernel SIGKILL the child when the thread that started it dies, however it
  dies (Linux's PR_SET_PDEATHSIG); None where there is no prctl. SIGKILL because a child hung in a collective
  never runs a handler, and jax's preemption notifier swallows SIGTERM."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    import ctypes
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the forked child only calls it
  except (OSError, AttributeError):
    return None
  parent = os.getpid()

  def preexec() -> None:
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the launcher died before prctl took effect: nobody else will stop us
      os.kill(os.getpid(), signal.SIGKILL)
  return preexec


def _pump(index: int, stream, out: TextIO, lock: threading.Lock) -> None:
  for line in stream:
    with lock:
      out.write(f"[{index}] {line}" if line.endswith("\n") else f"[{index}] {line}\n")
      out.flush()


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
  """SIGTERM the live processes, SIGKILL whatever is left after `grace` seconds: once one process died its
  peers can only hang in a collective, and jax's preemption notifier swallows SIGTERM."""
  alive = [p for p in procs if p.poll() is None]
  for p in alive:
    p.terminate()
  deadline = time.time() + grace
  for p in alive:
    try:
      p.wait(timeout=max(deadline - time.time(), 0.0))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def run(cmds: list[list[str]], env: Mapping[str, str] | None = None, out: TextIO | None = None,
        grace: float = 3.0) -> int:
  """Run `cmds` at once, streaming each one's output prefixed `[i] `; 0 when all succeed, else the exit code
  of the first to fail (128 + signal when killed), after stopping the rest. The processes die with the
  thread that calls this (which waits for them), also when it is killed."""
  out = sys.stdout if out is None else out
  lock = threading.Lock()
  # Own session: a terminal's Ctrl-C reaches only the launcher, which forwards exactly one SIGTERM. Outside
  # the launcher's process group, nothing would stop them if it died: the parent-death signal does.
  preexec = die_with_parent()
  procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                            errors="replace", bufsize=1, start_new_session=True, preexec_fn=preexec)
           for cmd in cmds]
  pumps = [threading.Thread(target=_pump, args=(i, p.stdout, out, lock), daemon=True)
           for i, p in enumerate(procs)]
  for t in pumps:
    t.start()
  rc = 0
  signals: list[int] = []
  old_handlers = {}
  if threading.current_thread() is threading.main_thread():
    for sig in (signal.SIGTERM, signal.SIGINT):
      old_handlers[sig] = signal.signal(sig, lambda signum, frame: signals.append(signum))
  forwarded = False
  try:
    while True:
      if signals and not forwarded:  # preemption: every process saves at the same step and exits 0
        forwarded = True
        with lock:
          print(f"[launch] {signal.Signals(signals[0]).name}: asking every process to save and exit (send it "
                "again to stop them at once)", file=sys.stderr, flush=True)
        for p in procs:
          if p.poll() is None:
            p.send_signal(signal.SIGTERM)
      if len(signals) > 1:
        rc = 128 + signals[-1]
        break
      codes = [p.poll() for p in procs]
      failed = next(((i, c) for i, c in enumerate(codes) if c not in (None, 0)), None)
      if failed is not None:
        i, c = failed
        rc = 128 - c if c < 0 else c
        with lock:
          print(f"[launch] process {i} exited with {c}; stopping the others", file=sys.stderr, flush=True)
        break
      if all(c == 0 for c in codes):
        break
      time.sleep(0.1)
  except KeyboardInterrupt:
    rc = 128 + signal.SIGINT
  finally:
    for sig, handler in old_handlers.items():
      signal.signal(sig, handler)
    _stop(procs, grace)
    for t in pumps:
      t.join(timeout=5.0)
  return rc


def launch(train_argv: list[str], processes: int, devices_per_process: int | None = None,
           out: TextIO | None = None) -> int:
  """`lm launch local`: run `lm train` as `processes` local processes; returns the launcher's exit code."""
  cmds = commands(train_argv, processes, free_port())
  return run(cmds, environment(os.environ, devices_per_process), out)
