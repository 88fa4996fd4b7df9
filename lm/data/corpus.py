"""Text sources as raw documents, and the deterministic train/val/test split.

Documents are `bytes`, never decoded: bits per byte counts the bytes a user gave us, valid UTF-8 or not.

A source string names one or more sources joined by commas:
  python-prose       docstrings of the running Python's standard library plus `pydoc_data.topics` (~2 MB)
  python-code        the standard library's `.py` files, one document per file (~11 MB)
  PATH, jsonl:PATH:FIELD, parquet:PATH:COLUMN   files, directories, globs, gs:// (lm/data/sources.py)
  synthetic:NAME[:KEY=VALUE]...  generated in memory: star graphs or name-induction stories (lm/data/synthetic.py)
"""

import ast
import hashlib
import inspect
import io
import json
import os
import pathlib
import sys
import sysconfig
import warnings

import numpy as np

from lm.data import sources
from lm.errors import DataError, plural

BUILTIN_SOURCES = ("python-prose", "python-code")
_SOURCE_HELP = "pass a file, directory, glob, 'jsonl:PATH:FIELD', 'python-prose' or 'python-code'"
# Bump when the extraction changes, so stale caches are ignored rather than trusted.
_CACHE_VERSION = 1
# Directories of the stdlib that are not the standard library's own prose or code.
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})


def cache_dir() -> pathlib.Path:
  """Where derived data (extracted corpora, trained tokenizers) is cached: $LM_CACHE_DIR or ~/.cache/lm."""
  return pathlib.Path(os.environ.get("LM_CACHE_DIR") or pathlib.Path.home() / ".cache" / "lm")


def atomic_write(path: pathlib.Path, data: bytes) -> None:
  """Writes `data` to `path` so that readers (other processes, hosts) never see a partial file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_bytes(data)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------
# The embedded default: the running Python's standard library.


def _stdlib_py_files() -> list[pathlib.Path]:
  """Every `.py` file of the standard library, sorted, without site-packages and test suites."""
  root = sysconfig.get_paths()["stdlib"]
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    files.extend(pathlib.Path(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
  return sorted(files)


def _docstrings(source: bytes) -> list[str]:
  """Module, class and function docstrings of one Python file, cleaned with `inspect.cleandoc`."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # SyntaxWarnings about old escape sequences are not our concern.
    tree = ast.parse(source)
  out = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node, clean=False)
      if doc and doc.strip():
        out.append(inspect.cleandoc(doc))
  return out


def _extract_stdlib(kind: str) -> list[bytes]:
  """Extracts `python-prose` or `python-code` from the running interpreter (takes seconds; cached)."""
  docs = []
  for path in _stdlib_py_files():
    try:
      source = path.read_bytes()
    except OSError:
      continue
    if kind == "python-code":
      docs.append(source)
      continue
    try:
      docs.extend(d.encode("utf-8") for d in _docstrings(source))
    except (SyntaxError, ValueError, UnicodeError, RecursionError, MemoryError):
      continue  # A few stdlib files are deliberately broken or in another encoding.
  if kind == "python-prose":
    import pydoc_data.topics  # pylint: disable=g-import-not-at-top

    topics = pydoc_data.topics.topics
    docs.extend(inspect.cleandoc(topics[k]).encode("utf-8") for k in sorted(topics))
    # Identical docstrings (inherited boilerplate, "Return self==value.") would leak across splits.
    docs = list(dict.fromkeys(docs))
  return [d for d in docs if d]


def _stdlib_cache_path(kind: str) -> pathlib.Path:
  key = json.dumps([_CACHE_VERSION, kind, sys.version, sysconfig.get_paths()["stdlib"]])
  digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
  return cache_dir() / "corpora" / f"{kind}-{digest}.npz"


def _save_docs(path: pathlib.Path, docs: list[bytes]) -> None:
  # Length-prefixed bytes in an .npz: no pickle, and loading is one read.
  buf = io.BytesIO()
  lengths = np.array([len(d) for d in docs], dtype=np.int64)
  np.savez(buf, lengths=lengths, data=np.frombuffer(b"".join(docs), dtype=np.uint8))
  atomic_write(path, buf.getvalue())


def _load_docs(path: pathlib.Path) -> list[bytes]:
  with np.load(path, allow_pickle=False) as z:
    lengths, data = z["lengths"], z["data"].tobytes()
  ends = np.cumsum(lengths).tolist()
  return [data[e - n : e] for e, n in zip(ends, lengths.tolist())]


def stdlib_documents(kind: str) -> list[bytes]:
  """`python-prose` or `python-code`, from the disk cache when present."""
  path = _stdlib_cache_path(kind)
  if path.exists():
    try:
      return _load_docs(path)
    except (OSError, ValueError, KeyError):
      pass  # A corrupt cache is rebuilt, not fatal.
  docs = _extract_stdlib(kind)
  try:
    _save_docs(path, docs)
  except OSError:
    pass  # A read-only home still gets its corpus, only slower next time.
  return docs


# ---------------------------------------------------------------------------------------------------------
# User sources (lm/data/sources.py reads them).


def _parts(source: str) -> list[str]:
  parts = [p.strip() for p in source.split(",") if p.strip()]
  if not parts:
    raise DataError(f"data.source {source!r} is empty; {sources.SOURCE_HELP}")
  return parts


def _part_documents(part: str):
  if part in BUILTIN_SOURCES:
    return iter(stdlib_documents(part))
  return sources.part_documents(part)


def iter_documents(source: str):
  """The non-empty documents of `source` (comma-separated sources) in a deterministic order, as a stream."""
  for part in _parts(source):
    for doc in _part_documents(part):
      if doc:
        yield doc


def source_size(source: str) -> tuple[int, int, int] | None:
  """(bytes, documents, files) of `source` from the file system alone (no file is read), or None when a part's size
  is known only by building it (`python-prose`, `python-code`, `synthetic:`). `bytes + 2 * documents` bounds
the text's bytes plus a bos and an eos per document where documents are counted: a file of a directory is one
document; jsonl, parquet, compressed and single split files count none. Missing paths and empty globs raise the
same one-line error as loading them would."""
  n_bytes = n_docs = n_files = 0
  for part in _parts(source):
    size = None if part in BUILTIN_SOURCES else sources.part_size(part)
    if size is None:
      return None
    b, d, f = size
    n_bytes, n_docs, n_files = n_bytes + b, n_docs + d, n_files + f
  return n_bytes, n_docs, n_files


def load_documents(source: str = "python-prose") -> list[bytes]:
  """Loads the documents of `source` (comma-separated sources) in a deterministic order; empty ones dropped."""
  docs = [d for part in _parts(source) for d in _part_documents(part)]
  n_docs, n_bytes = len(docs), sum(map(len, docs))
  # An empty document carries no text to predict; it would only add a bos->eos pair.
  docs = [d for d in docs if d]
  if not docs:
    raise DataError(f"data.source {source!r}: corpus is empty ({plural(n_docs, 'document')}, "
                    f"{plural(n_bytes, 'byte')}); point it at non-empty text")
  return docs


# ---------------------------------------------------------------------------------------------------------
# Splitting.


def _split_key(doc: bytes, seed: int) -> int:
  """A 64-bit key from the content alone, so identical documents always share a split."""
  h = hashlib.blake2b(doc, digest_size=8, key=int(seed).to_bytes(8, "little", signed=True))
  return int.from_bytes(h.digest(), "little")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
  if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
    raise DataError(
        f"data split: val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 and sum to "
        "< 1; lower them"
    )


def split_of(doc: bytes, settings: dict) -> str:
  """The split of one document under `settings` (val_fraction, test_fraction, split_seed), as split_documents."""
  k = _split_key(doc, settings["split_seed"])
  val, test = settings["val_fraction"], settings["test_fraction"]
  return "val" if k < val * 2**64 else "test" if k < (val + test) * 2**64 else "train"


def split_documents(
    docs: list[bytes], val_fraction: float = 0.02, test_fraction: float = 0.02, seed: int = 0,
    source: str | None = None,
) -> dict[str, list[bytes]]:
  """Splits documents into train/val/test by a content hash; val and test get >= 1 document when possible.

  `source` (the data.source the documents came from) is named in the error when the train split is empty.
  """
  check_fractions(val_fraction, test_fraction)
  keys = [_split_key(d, seed) for d in docs]
  val_end, test_end = val_fraction * 2**64, (val_fraction + test_fraction) * 2**64
  which = ["val" if k < val_end else "test" if k < test_end else "train" for k in keys]
  # Tiny corpora can leave a held-out split empty; move the train documents whose keys are closest to it
  # (all copies of one content at once, so duplicates never straddle splits).
  if len(docs) >= 3:
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
      if fraction > 0 and name not in which:
        train_keys = [k for k, w in zip(keys, which) if w == "train"]
        if len(set(train_keys)) > 1:
          smallest = min(train_keys)
          which = [name if k == smallest else w for k, w in zip(keys, which)]
  splits = {name: [d for d, w in zip(docs, which) if w == name] for name in ("train", "val", "test")}
  if not splits["train"]:
    where = f"data.source {source!r}" if source is not None else "data split"
    raise DataError(
        f"{where}: train split is empty ({plural(len(docs), 'document')}, {plural(sum(map(len, docs)), 'byte')}, "
        f"val_fraction={val_fraction}, test_fraction={test_fraction}); add documents or lower the fractions"
    )
  return splits


def check_held_out(splits: dict, source: str, val_fraction: float, test_fraction: float) -> None:
  """A held-out split asked for (fraction > 0) but left empty is an error: bits per byte of nothing reads 0."""
  for name, fraction in (("val", val_fraction), ("test", test_fraction)):
    if not splits[name] and fraction > 0:
      n = sum(map(len, splits.values()))
      raise DataError(f"data.source {source!r}: the {name} split is empty ({plural(n, 'document')}; "
                      f"{sources.describe_split(source)}); add documents or raise data.{name}_fraction")
