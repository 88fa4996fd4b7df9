"""Paths read from files (an index, a manifest) stay inside the directory that holds the file."""

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
