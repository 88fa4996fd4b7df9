"""Orbax checkpoints: one step directory holds everything needed to continue a run.

Items: `state` (params, optimizer state, step, PRNG key), `data` (the grain iterator state), `config` (the
run's config), `tokenizer` (its files, text or base64) and `integrity` (a checksum of every array and of each
JSON item, taken at save and checked at every restore) - the last four as JSON; no pickle anywhere.
Saves are asynchronous: orbax writes `<step>.orbax-checkpoint-tmp` and renames it when complete, so a crash
mid-save leaves the previous step as it was, and a half-written step is never listed.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import pathlib
import sys
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from lm import config as config_lib
from lm.data import tokenizers as tokenizers_lib
from lm.errors import CheckpointError, process_log, unraisable_to

CHECKPOINT_DIR = "checkpoints"
QUARANTINE_DIR = "corrupt-checkpoints"


# What etils.epath needs installed to reach each remote scheme, and the install that provides it.
_REMOTE_PACKAGES = {"gs": ("gcsfs", "pip install -e '.[gcs]'")}


def workdir_path(workdir) -> epath.Path:
  """Local paths made absolute (orbax's tensorstore writer rejects relative ones); `gs://...` kept, after
  checking that the filesystem package it needs is installed (one line, before anything is read or written)."""
  text = str(workdir)
  scheme, remote, _ = text.partition("://")
  if not remote:
    return epath.Path(os.path.abspath(text))
  module, install = _REMOTE_PACKAGES.get(scheme, (None, None))
  if module and importlib.util.find_spec(module) is None:
    raise CheckpointError(f"workdir {text!r} is on {scheme}:// but {module} is not installed; {install} "
                          f"(or pip install {module})")
  return epath.Path(text)


def _handlers(save_concurrent_gb: int = 96) -> dict:
  return dict(state=ocp.StandardCheckpointHandler(save_concurrent_gb=save_concurrent_gb),
              data=ocp.JsonCheckpointHandler(), config=ocp.JsonCheckpointHandler(),
              tokenizer=ocp.JsonCheckpointHandler(), integrity=ocp.JsonCheckpointHandler())


def manager(workdir, keep: int = 3, read_only: bool = False, save_concurrent_gb: int = 96) -> ocp.CheckpointManager:
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
  return ocp.CheckpointManager(workdir_path(workdir) / CHECKPOINT_DIR, options=options,
                               item_handlers=_handlers(save_concurrent_gb))


def tokenizer_to_json(tokenizer: tokenizers_lib.Tokenizer) -> dict:
  out = {}
  for name, data in tokenizer.files().items():
    try:
      out[name] = {"text": data.decode("utf-8")}
    except UnicodeDecodeError:  # SentencePiece models are binary protos.
      out[name] = {"base64": base64.b64encode(data).decode("ascii")}
  return out


def tokenizer_from_json(obj: dict, where: str) -> tokenizers_lib.Tokenizer:
  files = {name: (v["text"].encode("utf-8") if "text" in v else base64.b64decode(v["base64"]))
           for name, v in obj.items()}
  return tokenizers_lib.tokenizer_from_files(files, where)


# Integrity. Each array's checksum is two 32-bit sums of its bits weighted by odd functions of the element's
# index (the index from iotas, so a sharded array is summed where it lies, and the value does not depend on the
# mesh that saved or restores it): any change to one element changes the first sum, and two changes cancel in
# both with probability ~2^-64. JSON items get a SHA-256 of their canonical text. A mismatch at restore is
# damage, like a truncated file: the step is set aside and the previous one used.

class Damaged(Exception):
  """A step's bytes differ from what was saved (a checksum mismatch, a missing item): damage, never trained on."""


def _as_uint32(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words (64-bit values as two words on a trailing axis)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  width = x.dtype.itemsize
  if width in (4, 8):
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 64-bit values as [..., 2]
  return jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[width]).astype(jnp.uint32)


def _checksum(x: jax.Array) -> jax.Array:
  bits = _as_uint32(x)
  index = jnp.zeros(bits.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(bits.ndim)):  # the row-major element index, modulo 2^32
    index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride % (1 << 32))
    stride *= bits.shape[axis]
  first = jnp.sum(bits * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
  mixed = bits ^ (bits >> jnp.uint32(15))
  second = jnp.sum(mixed * ((index * jnp.uint32(0x9E3779B1) + jnp.uint32(0x7F4A7C15)) | jnp.uint32(1)),
                   dtype=jnp.uint32)
  return jnp.stack([first, second])


_checksums_jit = jax.jit(lambda tree: jax.tree.map(_checksum, tree))


def array_checksums(tree) -> dict[str, str]:
  """`{path: 'xxxxxxxx-xxxxxxxx'}` for every array of `tree` (paths as `leaf_shapes` names them). Every process
  calls it together (it is one jitted program over the global arrays)."""
  sums = jax.device_get(_checksums_jit(tree))
  paths = leaf_shapes(tree)
  return {path: "%08x-%08x" % tuple(int(v) for v in np.asarray(s).reshape(2))
          for path, s in zip(paths, jax.tree_util.tree_leaves(sums))}


def json_checksum(obj) -> str:
  """SHA-256 of a JSON item's canonical text (as it reads back: keys sorted, tuples as lists)."""
  text = json.dumps(json.loads(json.dumps(obj)), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save(mngr: ocp.CheckpointManager, step: int, state, data_state: Any, config_dict: dict,
         tokenizer: tokenizers_lib.Tokenizer) -> None:
  tokenizer_json = tokenizer_to_json(tokenizer)
  integrity = dict(version=1, arrays=array_checksums(state),
                   items=dict(config=json_checksum(config_dict), data=json_checksum(data_state),
                              tokenizer=json_checksum(tokenizer_json)))
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state),
      config=ocp.args.JsonSave(config_dict),
      tokenizer=ocp.args.JsonSave(tokenizer_json),
      integrity=ocp.args.JsonSave(integrity)), force=True)


# Reads go through the item handlers, not `CheckpointManager.restore`: the manager ends every restore with a
# barrier across processes, so a process whose read failed would meet its peers' barrier with another
# collective (`restore_newest`'s agreement) and both would hang. The handlers read and nothing else.

def _step_dir(mngr: ocp.CheckpointManager, step: int) -> epath.Path:
  return epath.Path(mngr.directory) / str(step)


def restore_integrity(mngr: ocp.CheckpointManager, step: int) -> dict | None:
  """A step's `integrity` item; None for a step saved before checksums were recorded."""
  path = _step_dir(mngr, step) / "integrity"
  if not path.exists():
    return None
  return ocp.JsonCheckpointHandler().restore(path)


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  """The JSON items of a step: {'config': dict, 'data': iterator state, 'tokenizer': Tokenizer, 'integrity':
  its checksums or None}, each JSON item checked against its checksum (`Damaged` if it differs)."""
  handler = ocp.JsonCheckpointHandler()
  step_dir = _step_dir(mngr, step)
  for name in ("config", "data", "tokenizer"):
    if not (step_dir / name).exists():  # a missing item is damage; orbax would say only "Unknown key"
      raise Damaged(f"its {name} item is missing")
  out = {name: handler.restore(step_dir / name) for name in ("config", "data", "tokenizer")}
  integrity = restore_integrity(mngr, step)
  for name, want in ((integrity or {}).get("items") or {}).items():
    if name in out and json_checksum(out[name]) != want:
      raise Damaged(f"its {name} item does not match the checksum recorded when it was saved")
  where = f"checkpoint step {step} in {mngr.directory}"
  return dict(config=out["config"], data=out["data"], tokenizer=tokenizer_from_json(out["tokenizer"], where),
              integrity=integrity)


def verify_arrays(integrity: dict | None, tree, prefix: str = "") -> None:
  """`Damaged` naming the arrays of `tree` (restored from a step, `prefix` its place in the saved state) whose
  checksums differ from those recorded at save; nothing to check for a step saved without them."""
  recorded = (integrity or {}).get("arrays")
  if not recorded:
    return
  got = array_checksums(tree)
  bad = [p for p, v in got.items() if recorded.get(prefix + p, v) != v]
  missing = [p for p in got if prefix + p not in recorded]
  if bad:
    raise Damaged(f"{len(bad)} array(s) differ from the checksums recorded when it was saved "
                  f"({', '.join(prefix + p for p in bad[:3])}{' ...' if len(bad) > 3 else ''})")
  if len(missing) == len(got) and got:
    raise Damaged("its checksums name none of the arrays restored")


def restore_state(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """Restore onto the shardings carried by `abstract_state` (ShapeDtypeStructs), whatever mesh saved it."""
  handler = ocp.StandardCheckpointHandler()
  try:
    return handler.restore(_step_dir(mngr, step) / "state", args=ocp.args.StandardRestore(abstract_state))
  finally:
    handler.close()


def restore_params(mngr: ocp.CheckpointManager, step: int, abstract_params):
  """The `params` subtree of a step's state alone: inference never reads (or holds) the optimizer state."""
  tree = {"params": abstract_params}
  handler = ocp.PyTreeCheckpointHandler()
  args = ocp.args.PyTreeRestore(item=tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree),
                                partial_restore=True)
  try:
    return handler.restore(_step_dir(mngr, step) / "state", args=args)["params"]
  finally:
    handler.close()


def leaf_shapes(tree) -> dict[str, tuple]:
  """Leaf shapes keyed by `a/b/0` paths, so a TrainState and orbax's dict-of-metadata compare equal."""
  def name(k):
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  return {"/".join(name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def saved_shapes(mngr: ocp.CheckpointManager, step: int) -> dict[str, tuple]:
  """`leaf_shapes` of a step's train state, from its metadata (no array is read)."""
  state_dir = _step_dir(mngr, step) / "state"
  for path in (state_dir, state_dir / "_METADATA"):  # absent: damage, not a change of the model's shape
    if not path.exists():
      raise Damaged(f"{path.relative_to(_step_dir(mngr, step))} is missing")
  saved_tree = mngr.item_metadata(step)["state"]
  return leaf_shapes(getattr(saved_tree, "tree", saved_tree))


def shape_differences(saved: dict[str, tuple], expected: dict[str, tuple]) -> list[str]:
  """`path: saved -> expected` for every leaf whose shape (or presence) differs."""
  return [f"{p}: {saved.get(p, 'absent')} -> {expected.get(p, 'absent')}" for p in sorted(set(saved) | set(expected))
          if saved.get(p) != expected.get(p)]


def config_differences(saved: dict, current: dict, sections=("model", "data", "optim")) -> list[str]:
  """`a.b: saved -> current` for every leaf of `sections` that differs between two config dicts."""
  a = {k: v for k, v in config_lib.flatten(saved).items() if k.split(".")[0] in sections}
  b = {k: v for k, v in config_lib.flatten(current).items() if k.split(".")[0] in sections}
  return [f"{k}: {a.get(k, 'absent')!r} -> {b.get(k, 'absent')!r}" for k in sorted(set(a) | set(b))
          if a.get(k, "absent") != b.get(k, "absent")]


def quarantine(workdir, step: int) -> epath.Path:
  """Move a step that cannot be restored out of the checkpoint directory (never deleted)."""
  workdir = workdir_path(workdir)
  target = workdir / QUARANTINE_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
  target.parent.mkdir(parents=True, exist_ok=True)
  # An object store has no empty folders: a file makes the target's parent exist before the move.
  (target.parent / "README").write_text("Checkpoint steps whose files could not be read, moved here by lm train; "
                                        "never deleted.\n")
  (workdir / CHECKPOINT_DIR / str(step)).rename(target)
  return target


def latest_step(workdir) -> int | None:
  path = workdir_path(workdir) / CHECKPOINT_DIR
  if not path.exists():
    return None
  return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True)).latest_step()


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_tree,
                      shardings)


def write_json(path, obj) -> None:
  """Atomic JSON write: a crash leaves either the old or the new file."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def write_text(path, text: str) -> None:
  """Replace a file whole and atomically: locally through a temporary file and a rename; on an object store
  (gs://) by one upload, which is atomic there, where a rename is a copy and a delete."""
  path = epath.Path(path)
  if "://" in str(path):
    path.write_text(text)
    return
  tmp = path.parent / f"{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"  # two writers never share one
  tmp.write_text(text)
  tmp.replace(path)


def first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def _disk_full(e: BaseException) -> bool:
  return any(t in str(e) for t in ("No space left", "File too large", "quota", "os_error_code='28'",
                                   "os_error_code='27'"))


def _damage_line(e: BaseException) -> str:
  """The most telling line of a damage error: our own `Damaged` text, else the innermost cause's first line
  (tensorstore's code and file, not orbax's wrapper with its repr of a TensorStore spec)."""
  chain, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or e.__context__
  own = [x for x in chain if isinstance(x, Damaged)]
  return str(own[0]) if own else first_line(chain[-1])


class Unreadable(Exception):
  """A step's own files are missing, truncated or garbled: the one failure that moves a step aside."""

  def __init__(self, step: int, error: BaseException | str):
    super().__init__(error if isinstance(error, str) else first_line(error))
    self.step = step


# tensorstore's status codes for a file that is absent or shorter than its index says (see `is_damage`).
_DAMAGE_CODES = ("NOT_FOUND:", "OUT_OF_RANGE:", "DATA_LOSS:")


def is_damage(e: BaseException, step_dir: str) -> bool:
  """Whether `e`, raised reading a step, says the step's own files are bad (absent, truncated, not JSON, not
  what was saved), as opposed to anything that may pass or that a rerun must see: a storage or network error,
  a permission, an out-of-memory, a format version this orbax does not read. Only damage is moved aside. A step
  directory that is missing as a whole is not damage: process 0 listed it, so this host sees a stale view (NFS,
  a remount). Wrapped errors count by their causes (orbax wraps tensorstore's)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if _is_damage_one(e, step_dir):
      return True
    e = e.__cause__ or e.__context__
  return False


def _is_damage_one(e: BaseException, step_dir: str) -> bool:
  if isinstance(e, (Damaged, json.JSONDecodeError, UnicodeDecodeError)):  # the JSON items are the only JSON read
    return True
  inside = step_dir.rstrip("/") + "/"  # a file within the step, not the step itself
  text = str(e)
  if isinstance(e, FileNotFoundError):
    return inside in text or str(getattr(e, "filename", "") or "").startswith(inside)
  # tensorstore's own errors name the step's file (orbax wraps them: the caller follows the cause); a chunk
  # whose compressed bytes were changed fails to decompress ("FAILED_PRECONDITION: ... Data corruption").
  if text.startswith(_DAMAGE_CODES) and inside in text:
    return True
  return text.startswith("FAILED_PRECONDITION:") and "corrupt" in text.lower() and inside in text


def log_path(workdir, writer: bool = True) -> pathlib.Path:
  """Where details that would clutter the terminal go: WORKDIR/lm-errors.log for the run that writes a local
  workdir, else (a reader, an object store) a file in the temporary directory."""
  text = str(workdir)
  if writer and "://" not in text and os.path.isdir(text) and os.access(text, os.W_OK):
    return pathlib.Path(text) / "lm-errors.log"
  return pathlib.Path(process_log())  # where the command line sends library logs


def log_details(workdir, what: str, e: BaseException | None = None, writer: bool = True) -> pathlib.Path:
  """Append `what` (and `e`'s traceback) to `log_path(workdir)`; route the unraisable exceptions a failed
  read leaves behind (tensorstore's abandoned coroutines, dozens of lines each) to the same file."""
  path = log_path(workdir, writer)
  try:
    with open(path, "a", encoding="utf-8") as f:
      f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {what}\n")
      if e is not None:
        f.write("".join(traceback.format_exception(e)))
  except OSError:
    pass
  if sys.unraisablehook is sys.__unraisablehook__:  # the command line routes them already
    unraisable_to(path)
  return path


class Checkpoints:
  """A workdir's checkpoints: the steps there, reading a step (its JSON items, its state), saving
  asynchronously, and moving a damaged step aside (to `corrupt-checkpoints/`, never deleted).

  A read raises `Unreadable` when the step's own files are bad (`is_damage`): the caller then tries an older
  step, and `restore_newest` decides with every process which step that is. Any other failure is a
  `CheckpointError` that leaves every step in place. Save errors (disk full, permissions) become one line
  naming the last good step; orbax renames a step into place only when complete, so that step stays intact.
  """

  def __init__(self, workdir, keep: int = 3, read_only: bool = True, quarantine: bool = False,
               save_concurrent_gb: int = 96):
    self.workdir = workdir_path(workdir)
    self.save_concurrent_gb = save_concurrent_gb  # GB of arrays orbax serialises at once
    self.read_only, self.quarantine_unreadable = read_only, quarantine and not read_only
    self.primary = jax.process_index() == 0
    self.keep = keep
    self.exists = (self.workdir / CHECKPOINT_DIR).exists()
    # A fresh workdir gets its checkpoint directory at the first save, not before (nothing is written
    # until the run has started).
    self.mngr = manager(self.workdir, keep=keep, read_only=read_only) if self.exists else None
    self.requested: int | None = None

  def steps(self) -> list[int]:
    """Saved steps, newest first (none when the workdir has no checkpoint directory)."""
    return sorted(self.mngr.all_steps(), reverse=True) if self.mngr is not None else []

  def latest_step(self) -> int | None:
    return self.mngr.latest_step() if self.mngr is not None else None

  def quarantined(self) -> list[str]:
    """Steps moved aside as damaged, by this run or an earlier one."""
    path = self.workdir / QUARANTINE_DIR
    return sorted(p.name for p in path.iterdir() if p.name[:1].isdigit()) if path.exists() else []

  def set_aside(self, step: int, why: str) -> None:
    """Warn that `step` is damaged and, when this run may, move it aside (process 0 only)."""
    where = ""
    if self.quarantine_unreadable and self.primary:
      where = f"; moved it to {quarantine(self.workdir, step)}"
    if self.primary:
      print(f"warning: checkpoint step {step} in {self.workdir} cannot be restored ({why}){where}; "
            "trying the previous one", file=sys.stderr, flush=True)

  def reload(self) -> None:
    if self.mngr is not None:
      self.mngr.reload()  # forget moved steps, so this run can save them again

  def _read(self, step: int, fn, *args):
    try:
      return fn(self.mngr, step, *args)
    except Exception as e:  # pylint: disable=broad-except  # sorted into damage and everything else
      log = log_details(self.workdir, f"reading checkpoint step {step} in {self.workdir}", e, not self.read_only)
      if is_damage(e, str(self.workdir / CHECKPOINT_DIR / str(step))):
        raise Unreadable(step, _damage_line(e)) from e
      raise CheckpointError(
          f"reading checkpoint step {step} in {self.workdir} failed ({first_line(e)}); that is not damage to "
          "the step's files (a storage or network error, permissions, memory, a format this version does not "
          f"read), so every step was left in place: fix the cause and rerun (details: {log})") from e

  def read_meta(self, step: int) -> dict:
    """{'config', 'data', 'tokenizer'} of a step; `Unreadable` if its files are damaged."""
    return self._read(step, restore_meta)

  def read_state(self, step: int, abstract_state):
    """The step's train state on the shardings `abstract_state` carries."""
    return self._read(step, restore_state, abstract_state)

  def read_params(self, step: int, abstract_params):
    """Only the step's params (no optimizer state is read), on the shardings `abstract_params` carries."""
    return self._read(step, restore_params, abstract_params)

  def verify(self, step: int, integrity: dict | None, tree, prefix: str = "") -> None:
    """`Unreadable` if the arrays of `tree` (a restored state, or `prefix`='params/' for params alone) differ
    from the checksums `integrity` (the step's, from `read_meta`) recorded at save."""
    self._read(step, lambda mngr, step: verify_arrays(integrity, tree, prefix))

  def read_shapes(self, step: int) -> dict[str, tuple]:
    """`leaf_shapes` of the step's saved state from its metadata (no array read)."""
    return self._read(step, saved_shapes)

  def save(self, step: int, state, data_state, config_dict: dict, tokenizer) -> None:
    try:
      if self.mngr is None:
        if self.read_only:
          raise CheckpointError(f"checkpoints in {self.workdir} were opened read-only")
        self.mngr = manager(self.workdir, keep=self.keep, save_concurrent_gb=self.save_concurrent_gb)
      self.mngr.wait_until_finished()  # surfaces a failure of the previous asynchronous save
      self.requested = step
      save(self.mngr, step, state, data_state, config_dict, tokenizer)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(e) from None

  def wait(self) -> None:
    if self.mngr is None:
      return
    try:
      self.mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(e) from None

  def _save_failed(self, e: BaseException) -> CheckpointError:
    why = "the disk is full" if _disk_full(e) else first_line(e)
    log = log_details(self.workdir, f"saving checkpoint step {self.requested} in {self.workdir}", e,
                      writer=not _disk_full(e))  # a full disk takes no log: it goes to the temporary directory
    try:
      last = latest_step(self.workdir)
    except Exception:  # pylint: disable=broad-except  # the listing itself may fail on a broken store
      last = None
    good = (f"the last good checkpoint (step {last}) is intact" if last is not None else
            "there is no checkpoint yet")
    return CheckpointError(
        f"saving checkpoint step {self.requested} in {self.workdir} failed ({why}); {good}: free space or fix "
        f"the directory, then rerun the same command{' to resume' if last is not None else ''} (details: {log})")


def _try(step: int, fn: Callable[[int], Any]) -> tuple[int, Any, BaseException | None]:
  """(outcome, fn(step), error): outcome 0 read, 1 damaged (`Unreadable`), 2 any other failure."""
  try:
    return 0, fn(step), None
  except Unreadable as e:
    return 1, None, e
  except Exception as e:  # pylint: disable=broad-except  # shared by the caller, then raised on every process
    return 2, None, e


def _agree_steps(steps: list[int]) -> list[int]:
  """Process 0's list of steps, on every process (object stores list eventually; hosts must not differ)."""
  if jax.process_count() == 1:
    return steps
  import numpy as np
  from jax.experimental import multihost_utils
  n = int(multihost_utils.broadcast_one_to_all(np.int64(len(steps))))
  mine = np.asarray(steps if jax.process_index() == 0 else [0] * n, np.int64).reshape(n)
  return [int(s) for s in multihost_utils.broadcast_one_to_all(mine)] if n else []


def _outcomes(mine: int) -> list[int]:
  """Every process's outcome of one attempt (0 restored, 1 damaged, 2 failed)."""
  if jax.process_count() == 1:
    return [mine]
  import numpy as np
  from jax.experimental import multihost_utils
  return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.int32(mine))).reshape(-1)]


def restore_newest(ckpts: Checkpoints, attempt: Callable[[int], Any],
                   verify: Callable[[int, Any], None] | None = None) -> tuple[int, Any] | None:
  """(step, attempt(step)) for the newest step whose files read, every process agreeing: process 0's list of
  steps is tried in order and a step counts only if it read on every process, and then passed `verify(step,
  result)` (its checksums: a program over the global arrays, so it runs only once every process holds them). A
  damaged step is set aside (moved by process 0 when `ckpts` may); any other failure on any process stops every
  process with every step in place. None only when the workdir has no step at all: a workdir whose steps are
  all damaged, or were moved aside by an earlier run, is an error (never a silent start from step 0)."""
  steps = _agree_steps(ckpts.steps())
  damaged = []
  for step in steps:
    outcome, result, error = _try(step, attempt)
    everyone = _outcomes(outcome)
    if max(everyone) == 0 and verify is not None:
      outcome, _, error = _try(step, lambda s: verify(s, result))
      everyone = _outcomes(outcome)
    if any(v not in (0, 1, 2) for v in everyone):
      raise CheckpointError(f"processes disagree on restoring checkpoint step {step} in {ckpts.workdir} (outcomes "
                            f"{everyone}); every step was left in place")
    if max(everyone) == 2:
      if outcome == 2:
        raise error
      raise CheckpointError(f"process {everyone.index(2)} could not restore checkpoint step {step} in "
                            f"{ckpts.workdir} (its log says why); every step was left in place")
    if max(everyone) == 1:
      moved, failure = 0, None
      try:
        ckpts.set_aside(step, str(error) if error is not None else f"damaged as read by process {everyone.index(1)}")
      except Exception as e:  # pylint: disable=broad-except  # shared, so no process waits for a move that failed
        moved, failure = 2, e
      if max(_outcomes(moved)) != 0:
        raise CheckpointError(f"moving damaged checkpoint step {step} in {ckpts.workdir} aside failed"
                              + (f" ({first_line(failure)})" if failure else " on process 0")
                              + "; move or delete it by hand and rerun") from failure
      damaged.append(step)
      ckpts.reload()
      continue
    return step, result
  if damaged or (ckpts.quarantine_unreadable and ckpts.quarantined()):
    kept = (f"kept in {ckpts.workdir / QUARANTINE_DIR}" if ckpts.quarantine_unreadable else "left in place")
    what = (f"step {', '.join(map(str, damaged))} cannot be read" if damaged else
            "every step it had was moved aside as damaged")
    raise CheckpointError(f"no checkpoint in {ckpts.workdir} restores: {what} (damaged steps are {kept}); pass "
                          "--restart to start over from step 0 (nothing is deleted)")
  return None
