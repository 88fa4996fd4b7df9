"""Orbax checkpoints: one step directory holds everything needed to continue a run.

Items: `state` (params, optimizer state, step, PRNG key), `data` (the grain iterator state), `config` (the
run's config) and `tokenizer` (its files, text or base64) - the last three as JSON; no pickle anywhere.
Saves are asynchronous: orbax writes `<step>.orbax-checkpoint-tmp` and renames it when complete, so a crash
mid-save leaves the previous step as it was, and a half-written step is never listed.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from lm import config as config_lib
from lm.data import tokenizers as tokenizers_lib
from lm.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
QUARANTINE_DIR = "corrupt-checkpoints"


def workdir_path(workdir) -> epath.Path:
  """Local paths made absolute (orbax's tensorstore writer rejects relative ones); `gs://...` kept."""
  text = str(workdir)
  return epath.Path(text if "://" in text else os.path.abspath(text))


def _handlers() -> dict:
  return dict(state=ocp.StandardCheckpointHandler(), data=ocp.JsonCheckpointHandler(),
              config=ocp.JsonCheckpointHandler(), tokenizer=ocp.JsonCheckpointHandler())


def manager(workdir, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
  return ocp.CheckpointManager(workdir_path(workdir) / CHECKPOINT_DIR, options=options,
                               item_handlers=_handlers())


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


def save(mngr: ocp.CheckpointManager, step: int, state, data_state: Any, config_dict: dict,
         tokenizer: tokenizers_lib.Tokenizer) -> None:
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state),
      config=ocp.args.JsonSave(config_dict),
      tokenizer=ocp.args.JsonSave(tokenizer_to_json(tokenizer))), force=True)


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  """The JSON items of a step: {'config': dict, 'data': iterator state, 'tokenizer': Tokenizer}."""
  out = mngr.restore(step, args=ocp.args.Composite(
      data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore(), tokenizer=ocp.args.JsonRestore()))
  where = f"checkpoint step {step} in {mngr.directory}"
  return dict(config=out["config"], data=out["data"], tokenizer=tokenizer_from_json(out["tokenizer"], where))


def restore_state(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """Restore onto the shardings carried by `abstract_state` (ShapeDtypeStructs), whatever mesh saved it."""
  return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]


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
  """Atomic JSON write (tmp + rename): a crash leaves either the old or the new file."""
  path = epath.Path(path)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
  tmp.replace(path)


def first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def _disk_full(e: BaseException) -> bool:
  return any(t in str(e) for t in ("No space left", "File too large", "quota", "os_error_code='28'",
                                   "os_error_code='27'"))


class Checkpoints:
  """A workdir's checkpoints: the steps there, reading a step (its JSON items, its state), saving
  asynchronously, and moving an unreadable step aside (to `corrupt-checkpoints/`, never deleted).

  Reads report an unreadable step by returning None after a warning naming it, so a caller walks `steps()`
  newest first and takes the first step that reads. Save errors (disk full, permissions) become one line
  naming the last good step; orbax renames a step into place only when complete, so that step stays intact.
  """

  def __init__(self, workdir, keep: int = 3, read_only: bool = True, quarantine: bool = False):
    self.workdir = workdir_path(workdir)
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

  def _unreadable(self, step: int, e: BaseException) -> None:
    where = ""
    if self.quarantine_unreadable and self.primary:
      where = f"; moved it to {quarantine(self.workdir, step)}"
      self.mngr.reload()  # forget the moved step, so this run can save it again
    if self.primary:
      print(f"warning: checkpoint step {step} in {self.workdir} cannot be restored ({first_line(e)}){where}; "
            "trying the previous one", file=sys.stderr, flush=True)

  def read_meta(self, step: int) -> dict | None:
    """{'config', 'data', 'tokenizer'} of a step, or None (warned, and moved aside if asked) if unreadable."""
    try:
      return restore_meta(self.mngr, step)
    except Exception as e:  # pylint: disable=broad-except  # unreadable files: the caller tries an older step
      self._unreadable(step, e)
      return None

  def read_state(self, step: int, abstract_state):
    """The step's train state on the shardings `abstract_state` carries, or None if its files do not read."""
    try:
      return restore_state(self.mngr, step, abstract_state)
    except Exception as e:  # pylint: disable=broad-except
      self._unreadable(step, e)
      return None

  def read_shapes(self, step: int) -> dict[str, tuple] | None:
    """`leaf_shapes` of the step's saved state from its metadata (no array read), or None if unreadable."""
    try:
      return saved_shapes(self.mngr, step)
    except Exception as e:  # pylint: disable=broad-except
      self._unreadable(step, e)
      return None

  def save(self, step: int, state, data_state, config_dict: dict, tokenizer) -> None:
    try:
      if self.mngr is None:
        if self.read_only:
          raise CheckpointError(f"checkpoints in {self.workdir} were opened read-only")
        self.mngr = manager(self.workdir, keep=self.keep)
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
    return CheckpointError(
        f"saving checkpoint step {self.requested} in {self.workdir} failed ({why}); the last good checkpoint "
        f"(step {latest_step(self.workdir)}) is intact: free space or fix the directory, then rerun the same "
        "command to resume")
