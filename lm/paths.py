"""Paths read from files (an index, a manifest) stay inside the directory that holds the file; registrations named
by a dotted module path are imported from it (`import_registering`)."""

import importlib
import os
import posixpath

from lm.errors import DataError


def inside(root, name, what: str, fix: str, error: type = DataError) -> str:
  """`root/name` when `name` stays inside `root`: not absolute, no `..` out and (locally) no symlink out;
  otherwise `error` with one line: `{what} names {name!r}, which leads outside {root}; {fix}`."""
  root, name = str(root), str(name)
  norm = posixpath.normpath(name.replace("\\", "/")) if name else ""
  escapes = (not name or "://" in name or posixpath.isabs(norm) or os.path.isabs(name) or norm == ".."
             or norm.startswith("../"))
  joined = f"{root.rstrip('/')}/{norm}" if "://" in root else os.path.join(root, norm)
  if not escapes and "://" not in root:
    real_root = os.path.realpath(root)
    escapes = os.path.commonpath([real_root, os.path.realpath(joined)]) != real_root
  if escapes:
    raise error(f"{what} names {name!r}, which leads outside {root}; {fix}")
  return joined


def import_registering(name: str, registry) -> None:
  """Import the module a dotted registration `name` lives in (the module `name` itself, else its parent) until
  `registry` holds it. A module that is missing is skipped; one that exists but imports something missing
  raises, so the user sees that. Used by every registry found by module name (objectives, decoding methods,
  data formats, rewards)."""
  for module in (name, name.rpartition(".")[0]):
    if name in registry or not module:
      return
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name is None or not module.startswith(e.name):
        raise
