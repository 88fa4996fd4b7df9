"""One writer per workdir: a lease file that `lm train` and `lm rl` hold while they run.

`WORKDIR/lease.json` names its holder (command, host, pid, start) and the time it was last renewed; a thread
renews it every `RENEW_SECONDS`. A second writer is refused in one line naming the holder. A lease whose
holder is gone is taken over: on the same host when its pid no longer runs, from any host once it has not been
renewed for `STALE_SECONDS`. Locally the lease appears whole or not at all (written to a temporary file, then
hard-linked into place, which fails if one exists); on an object store (gs://) it is one upload read back after
a pause, so of two writers racing for it the one whose upload landed last keeps it and the other is refused.
Readers (`lm eval`, `lm sample`, `lm.load`) never take it. In a multi-process run process 0 holds it for all.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import sys
import threading
import time
import uuid

import jax
from etils import epath

from lm.errors import CheckpointError

LEASE = "lease.json"
RENEW_SECONDS = 30.0
STALE_SECONDS = 300.0
SETTLE_SECONDS = 2.0  # object stores: how long to wait before reading an uploaded lease back

_held: dict[str, int] = {}  # workdirs this process holds, with how many nested `hold`s


def _path(workdir) -> epath.Path:
  return epath.Path(str(workdir)) / LEASE


def _remote(path) -> bool:
  return "://" in str(path)


def read(workdir) -> dict | None:
  """The lease of `workdir` as written ({} if unreadable), None when there is none."""
  path = _path(workdir)
  try:
    text = path.read_text()
  except (FileNotFoundError, NotADirectoryError):
    return None
  try:
    lease = json.loads(text)
    return lease if isinstance(lease, dict) else {}
  except ValueError:
    return {}


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process: it runs
    return True
  return True


def stale(lease: dict, now: float | None = None) -> str | None:
  """Why `lease`'s holder is gone (a reason to take it over), or None while it may still be writing."""
  now = time.time() if now is None else now
  if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
    if lease["pid"] == os.getpid():
      return "this process's own lease, left by an earlier run that stopped"
    if not _running(lease["pid"]):
      return f"pid {lease['pid']} on this host no longer runs"
    return None
  renewed = lease.get("renewed")
  if not isinstance(renewed, (int, float)):
    return None  # unreadable: refused until someone deletes it, or its file ages out (below)
  if now - renewed > STALE_SECONDS:
    return f"not renewed for {now - renewed:.0f} s (more than {STALE_SECONDS:.0f} s)"
  return None


def describe(lease: dict, workdir) -> str:
  if not lease:
    return f"{_path(workdir)} exists but cannot be read"
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.get("started", 0)))
  ago = time.time() - lease.get("renewed", 0)
  return (f"`{lease.get('command', '?')}` (pid {lease.get('pid', '?')} on host {lease.get('host', '?')}, since "
          f"{since}, lease renewed {ago:.0f} s ago)")


def _refuse(workdir, lease: dict) -> CheckpointError:
  return CheckpointError(
      f"workdir {str(workdir)!r} is being written by {describe(lease, workdir)}: one writer per workdir; wait "
      f"for it to finish or use another --workdir (a lease whose holder is gone is taken over: on its host at "
      f"once, from any host {STALE_SECONDS:.0f} s after its last renewal; or delete {_path(workdir)})")


def check_writable(workdir) -> None:
  """The workdir can be created or written, checked without creating it. Remote paths (gs://) are left to
  the first write."""
  if _remote(workdir):
    return
  path = pathlib.Path(str(workdir))
  while not path.exists() and path != path.parent:
    path = path.parent
  if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
    why = "is not a directory" if not path.is_dir() else "is not writable"
    raise CheckpointError(f"workdir {str(workdir)!r} cannot be created: {str(path)!r} {why}; pass --workdir to a "
                          "writable directory")


class Lease:
  """The lease of one workdir, held by this process (`acquire`, `renew`, `release`)."""

  def __init__(self, workdir, command: str):
    self.workdir, self.path, self.command = str(workdir), _path(workdir), command
    self.token = uuid.uuid4().hex
    self.started = time.time()
    self.created_dir = False
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.took_over: str | None = None

  def _text(self) -> str:
    return json.dumps(dict(command=self.command, host=socket.gethostname(), pid=os.getpid(), token=self.token,
                           started=self.started, renewed=time.time()), indent=1)

  def acquire(self) -> None:
    check_writable(self.workdir)
    workdir = epath.Path(self.workdir)
    if not workdir.exists():
      workdir.mkdir(parents=True, exist_ok=True)
      self.created_dir = True
    for _ in range(3):  # a stale lease is removed once, then the race for a new one is decided by the store
      current = read(self.workdir)
      if current is not None:
        reason = stale(current) or self._aged_out(current)
        if reason is None:
          raise _refuse(self.workdir, current)
        self.took_over = f"took over the lease of {describe(current, self.workdir)}: {reason}"
        with contextlib.suppress(FileNotFoundError):
          self.path.unlink()
      if self._create():
        return
    raise _refuse(self.workdir, read(self.workdir) or {})

  def _aged_out(self, current: dict) -> str | None:
    """An unreadable lease (a writer killed mid-write on an object store) counts as gone once its file is old."""
    if current or _remote(self.path):
      return None
    age = time.time() - os.path.getmtime(str(self.path))
    return f"unreadable and {age:.0f} s old" if age > STALE_SECONDS else None

  def _create(self) -> bool:
    if _remote(self.path):
      self.path.write_text(self._text())
      time.sleep(SETTLE_SECONDS)
      return (read(self.workdir) or {}).get("token") == self.token
    tmp = f"{self.path}.{self.token}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(self._text())
    try:
      os.link(tmp, str(self.path))  # fails if a lease exists: the lease appears whole or not at all
      return True
    except FileExistsError:
      return False
    finally:
      os.unlink(tmp)

  def renew(self) -> None:
    """Rewrite the lease with the time now, if it is still this process's."""
    if (read(self.workdir) or {}).get("token") != self.token:
      return
    if _remote(self.path):
      self.path.write_text(self._text())
      return
    tmp = f"{self.path}.{self.token}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(self._text())
    os.replace(tmp, str(self.path))

  def start_renewing(self, every: float = RENEW_SECONDS) -> None:
    def loop():
      while not self._stop.wait(every):
        with contextlib.suppress(Exception):  # a failed renewal is retried; the lease ages out only if all fail
          self.renew()
    self._thread = threading.Thread(target=loop, name="lm-lease", daemon=True)
    self._thread.start()

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    with contextlib.suppress(Exception):
      if (read(self.workdir) or {}).get("token") == self.token:
        self.path.unlink()
      if self.created_dir and not _remote(self.path) and not any(epath.Path(self.workdir).iterdir()):
        epath.Path(self.workdir).rmdir()  # a run that failed before writing anything leaves no empty workdir


def _agree(ok: bool) -> bool:
  """Whether process 0 got the lease, on every process."""
  if jax.process_count() == 1:
    return ok
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


@contextlib.contextmanager
def hold(workdir, command: str):
  """Hold `workdir`'s lease for the block (process 0 takes it; every process learns whether it did). Nested
  holds of one workdir by one process are one lease."""
  key = str(workdir)
  if key in _held:
    _held[key] += 1
    try:
      yield
    finally:
      _held[key] -= 1
    return
  lease = Lease(workdir, command) if jax.process_index() == 0 else None
  error = None
  if lease is not None:
    try:
      lease.acquire()
    except Exception as e:  # pylint: disable=broad-except  # shared below: no process may wait for process 0
      error = e if isinstance(e, CheckpointError) else CheckpointError(
          f"taking the lease of workdir {key!r} failed ({type(e).__name__}: {e}); check the directory and rerun")
  if not _agree(error is None):
    raise error or CheckpointError(f"workdir {key!r} is being written by another run (process 0 could not take "
                                   "its lease; its log names the holder)")
  if lease is not None:
    if lease.took_over:
      print(f"warning: {lease.took_over}", file=sys.stderr, flush=True)
    lease.start_renewing()
  _held[key] = 1
  try:
    yield
  finally:
    del _held[key]
    if lease is not None:
      lease.release()
