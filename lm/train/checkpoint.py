"""Orbax checkpoints: one step directory holds the train state, the data iterator state and the config.

Saves are asynchronous (orbax writes to a temporary directory and renames it when complete, so a crash
mid-save never replaces the previous good step). No pickle: the config and iterator state are JSON.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from lm.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"


def workdir_path(workdir) -> epath.Path:
  """Local paths made absolute (orbax's tensorstore writer rejects relative ones); `gs://...` kept."""
  text = str(workdir)
  return epath.Path(text if "://" in text else os.path.abspath(text))


def manager(workdir, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
  return ocp.CheckpointManager(workdir_path(workdir) / CHECKPOINT_DIR, options=options,
                               item_names=("state", "data", "config"))


def save(mngr: ocp.CheckpointManager, step: int, state, data_state: Any, config_dict: dict) -> None:
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state),
      config=ocp.args.JsonSave(config_dict)), force=True)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state) -> tuple[Any, Any]:
  """Restore onto the shardings carried by `abstract_state` (ShapeDtypeStructs), whatever mesh saved it."""
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return restored["state"], restored["data"]


def latest_step(workdir) -> int | None:
  path = workdir_path(workdir) / CHECKPOINT_DIR
  if not path.exists():
    return None
  return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True)).latest_step()


def load_run_config(workdir):
  """The config a run was trained with; error naming the workdir when it holds no run."""
  from lm import config as config_lib
  path = epath.Path(workdir) / "config.json"
  if not path.exists() or latest_step(workdir) is None:
    raise CheckpointError(f"workdir {str(workdir)!r} holds no checkpoint; train first with "
                          f"`lm train EXPERIMENT --workdir {workdir}`")
  return config_lib.from_json(path.read_text())


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_tree,
                      shardings)


def write_json(path, obj) -> None:
  """Atomic JSON write (tmp + rename): a crash leaves either the old or the new file."""
  path = epath.Path(path)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
  tmp.replace(path)
