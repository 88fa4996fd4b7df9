"""User text sources, read as a stream of documents (`bytes`), local or on an object store (gs://, via epath).

  PATH                 a file, a directory (every regular file below it) or a glob. A directory or glob gives
                       one document per file; a single file is split into documents at blank lines (or into
                       pieces of about PIECE_BYTES at line ends when it has none). `.gz` and `.zst` files are
                       decompressed; a directory saved by Hugging Face `datasets` (`save_to_disk`) gives its
                       `text` column. Binary and other compressed files are refused by name.
  jsonl:PATH:FIELD     one document per JSON line (`.jsonl`, `.jsonl.gz`, `.jsonl.zst`), from FIELD
  parquet:PATH:COLUMN  one document per row of a Parquet column (pyarrow)
  NAME:...             any registered format (`register_format`): `synthetic:` (lm/data/synthetic.py) is one, and
                       a user's is found by dotted module path (`data.source=mypkg.myformat:ARGS` imports
                       `mypkg.myformat`, or `mypkg`, which registers `mypkg.myformat`)

Nothing here holds more than one file (or one Parquet row group) at a time.
"""

import dataclasses
import glob
import gzip
import importlib
import io
import json
import os
import re
import sys
import zlib
from typing import Callable, Iterator

from etils import epath

from lm.errors import DataError, type_name
from lm.paths import import_registering, inside

SOURCE_HELP = ("pass a file, directory, glob, 'jsonl:PATH:FIELD', 'parquet:PATH:COLUMN', 'synthetic:NAME', "
               "'python-prose', 'python-code' or a registered format 'mypkg.myformat:ARGS'")
PIECE_BYTES = 64 * 1024
_READ = 1 << 20
# Leading bytes of formats that are not text: (offset, magic, what it is, what to do).
_REMOVE = "remove it from the source"
_MAGIC = (
    (0, b"\x89PNG", "a PNG image", _REMOVE),
    (0, b"\xff\xd8\xff", "a JPEG image", _REMOVE),
    (0, b"GIF8", "a GIF image", _REMOVE),
    (0, b"II*\x00", "a TIFF image", _REMOVE),
    (0, b"MM\x00*", "a TIFF image", _REMOVE),
    (0, b"\x93NUMPY", "a NumPy array (.npy)", _REMOVE),
    (0, b"\x89HDF\r\n\x1a\n", "an HDF5 file", _REMOVE),
    (0, b"SQLite format 3\x00", "an SQLite database", _REMOVE),
    (0, b"\x80\x02", "a Python pickle", _REMOVE),
    (0, b"\x80\x03", "a Python pickle", _REMOVE),
    (0, b"\x80\x04\x95", "a Python pickle", _REMOVE),
    (0, b"\x80\x05\x95", "a Python pickle", _REMOVE),
    (0, b"PK\x03\x04", "a zip archive", "unpack it"),  # also .npz, .docx, .jar, PyTorch's .pt
    (257, b"ustar", "a tar archive", "unpack it"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", "unpack it"),
    (0, b"Rar!\x1a\x07", "a RAR archive", "unpack it"),
    (0, b"\x1f\x8b\x08", "gzip-compressed", "name it *.gz so it is decompressed"),
    (0, b"\x28\xb5\x2f\xfd", "zstd-compressed", "name it *.zst so it is decompressed"),
    (0, b"BZh", "bzip2-compressed", "decompress it"),
    (0, b"\xfd7zXZ", "xz-compressed", "decompress it"),
    (0, b"\x04\x22\x4d\x18", "lz4-compressed", "decompress it"),
    (0, b"PAR1", "a Parquet file", "read it as 'parquet:PATH:COLUMN'"),
    (0, b"ARROW1", "an Arrow file", "point the source at the datasets directory that holds it"),
    (0, b"\x7fELF", "an executable", _REMOVE),
    (0, b"\xcf\xfa\xed\xfe", "an executable", _REMOVE),
    (0, b"\xca\xfe\xba\xbe", "a compiled Java class or executable", _REMOVE),
    (0, b"\x00asm", "a WebAssembly module", _REMOVE),
    (0, b"%PDF", "a PDF", "extract its text first"),
    (0, b"OggS", "an Ogg audio or video file", _REMOVE),
    (0, b"fLaC", "a FLAC audio file", _REMOVE),
    (4, b"ftyp", "an MP4 or QuickTime video", _REMOVE),
)
# The content check on a file's first bytes (at least _SNIFF_MIN of them): binary when over 5% are NUL or other
# control characters (not tab, newline, CR, FF, VT, backspace or escape). Text in any ASCII-compatible encoding
# (UTF-8, Latin-1, cp1251, Shift-JIS, ...) has almost none; random bytes have 11%, UTF-16 and numbers far more.
_SNIFF_MIN = 512
_CONTROL = bytes(c for c in range(32) if c not in b"\t\n\r\f\v\b\x1b") + b"\x7f"  # NUL included


# ---------------------------------------------------------------------------------------------------------
# Formats: `NAME:ARGS` parts of a data.source, registered like objectives.

@dataclasses.dataclass(frozen=True)
class Format:
  """A source format: `documents(part)` streams the documents of a part `NAME:ARGS`; `size(part)` gives
  (bytes, documents, files) without reading them, or None when only building them tells; `fingerprint(part)`
  is what identifies the content cheaply (default: the part itself and this Python, as for generated data);
  `per_record`: documents are records, not files (for messages about splits)."""
  name: str
  documents: Callable[[str], Iterator[bytes]]
  size: Callable[[str], tuple[int, int, int] | None] | None = None
  fingerprint: Callable[[str], list] | None = None
  per_record: bool = True


_FORMATS: dict[str, Format] = {}
_BUILTIN_FORMAT_MODULES = ("lm.data.synthetic",)  # register on import, like any user's format module
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def register_format(name: str, size=None, fingerprint=None, per_record: bool = True):
  """Register `documents(part) -> iterator of bytes` as the format of data.source parts `NAME:ARGS`."""
  def wrap(documents):
    _FORMATS[name] = Format(name, documents, size, fingerprint, per_record)
    return documents
  return wrap


def format_of(part: str) -> Format | None:
  """The registered format of a source part, importing a dotted name's module; None for a path."""
  for module in _BUILTIN_FORMAT_MODULES:
    importlib.import_module(module)
  name, sep, _ = part.partition(":")
  if not sep or is_remote(part):
    return None
  if name not in _FORMATS and _DOTTED.match(name):
    try:
      import_registering(name, _FORMATS)
    except ModuleNotFoundError as e:
      raise DataError(f"data.source {part!r}: format module {name!r} imports {e.name!r}, which is not installed; "
                      "install it") from None
    if name not in _FORMATS:
      raise DataError(f"data.source {part!r}: no format {name!r} (no module registers it with "
                      "lm.data.sources.register_format); check the name or put its module on sys.path")
  return _FORMATS.get(name)


def foreign_formats(source: str) -> list[str]:
  """The dotted format names of `source`'s parts that reading it would import (registered by no module imported
  yet): what a saved config may not name without --trust-code. Nothing is imported to find out."""
  out = []
  for part in str(source).split(","):
    name, sep, _ = part.strip().partition(":")
    if sep and _DOTTED.match(name) and name not in _FORMATS and not is_remote(part.strip()) and \
        name not in sys.modules and name.rpartition(".")[0] not in sys.modules:
      out.append(name)
  return out


def formats() -> list[str]:
  format_of("")
  return sorted(_FORMATS)


def is_remote(path: str) -> bool:
  return "://" in str(path)


def _epath(path: str) -> epath.Path:
  try:
    return epath.Path(path)
  except ImportError as e:  # gs:// without gcsfs
    raise DataError(f"{path!r}: {e}; pip install gcsfs (or lm[gcs])") from None


def _call_store(fn, path: str):
  try:
    return fn()
  except ImportError as e:
    raise DataError(f"{path!r}: {str(e).splitlines()[0]}; pip install gcsfs (or lm[gcs])") from None


def _has_magic(s: str) -> bool:
  return any(c in s for c in "*?[")


def _is_datasets_dir(path: str) -> bool:
  p = _epath(path)
  return _call_store(lambda: (p / "state.json").exists() or (p / "dataset_dict.json").exists(), path)


def _files_under(directory: str) -> list[str]:
  """Regular files below `directory`, sorted; hidden files and directories (.git, ...) are skipped."""
  if is_remote(directory):
    root = _epath(directory)
    return sorted(str(p) for p in _call_store(lambda: list(root.rglob("*")), directory)
                  if not any(part.startswith(".") for part in p.relative_to(root).parts) and p.is_file())
  files = []
  for dirpath, dirnames, filenames in os.walk(directory):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    files.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
  return sorted(f for f in files if os.path.isfile(f))


def resolve_paths(pattern: str, source: str) -> list[str]:
  """A file, directory or glob -> the sorted list of files it names (a datasets directory stays one entry)."""
  pattern = pattern if is_remote(pattern) else os.path.expanduser(pattern)
  if _has_magic(pattern):
    if is_remote(pattern):
      scheme, rest = pattern.split("://", 1)
      bucket, _, pat = rest.partition("/")
      root = _epath(f"{scheme}://{bucket}")
      matches = sorted(str(p) for p in _call_store(lambda: list(root.glob(pat)), pattern))
    else:
      matches = sorted(glob.glob(pattern, recursive=True))
    if not matches:
      raise DataError(f"data.source {source!r}: glob {pattern!r} matches nothing; check the pattern or {SOURCE_HELP}")
  elif _call_store(lambda: _epath(pattern).exists(), pattern):
    matches = [pattern]
  else:
    raise DataError(f"data.source {source!r}: path {pattern!r} does not exist; {SOURCE_HELP}")
  files = []
  for m in matches:
    p = _epath(m)
    if _call_store(p.is_dir, m):
      files.extend([m] if _is_datasets_dir(m) else _files_under(m))
    elif _call_store(p.is_file, m):
      files.append(m)
  if not files:
    _check_not_half_prepared(pattern, source)
    raise DataError(f"data.source {source!r}: {pattern!r} holds no regular files; point it at text files")
  return files


def _open(file: str):
  """A binary file object of `file`'s decoded bytes (.gz, .zst decompressed)."""
  raw = _call_store(lambda: _epath(file).open("rb"), file) if is_remote(file) else open(file, "rb")
  name = file.lower()
  if name.endswith(".gz"):
    return gzip.GzipFile(fileobj=raw)
  if name.endswith(".zst"):
    return io.BufferedReader(_Zstd(raw))
  return raw


class _Zstd(io.RawIOBase):
  """Decompressed bytes of a .zst stream of one or more frames; EOFError where the stream ends inside a frame
  (zstandard's stream_reader ends quietly on a truncated file)."""

  def __init__(self, raw):
    import zstandard  # pylint: disable=import-outside-toplevel
    self._raw, self._dctx, self._held = raw, zstandard.ZstdDecompressor(), b""
    self._obj, self._fed = self._dctx.decompressobj(), False

  def readable(self) -> bool:
    return True

  def readinto(self, b) -> int:
    while not self._held:
      chunk = self._raw.read(_READ)
      if not chunk:
        if self._fed and not self._obj.eof:
          raise EOFError("Compressed file ended before the end of a zstd frame")
        return 0
      while chunk:
        self._held += self._obj.decompress(chunk)
        self._fed, chunk = True, b""
        if self._obj.eof:  # a frame ended: what follows it starts the next one
          chunk, self._obj, self._fed = self._obj.unused_data, self._dctx.decompressobj(), False
    n = min(len(b), len(self._held))
    b[:n], self._held = self._held[:n], self._held[n:]
    return n

  def close(self) -> None:
    self._raw.close()
    super().close()


def _read_failed(e: Exception, file: str, source: str) -> DataError:
  """A compressed file that ends early or does not decompress: one line naming it."""
  why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
  return DataError(f"data.source {source!r}: {file} is truncated or not validly compressed ({why}); re-download "
                   "or re-compress it, or remove it from the source")


_READ_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _zstd_error() -> tuple:
  try:
    import zstandard  # pylint: disable=import-outside-toplevel
  except ImportError:
    return ()
  return (zstandard.ZstdError,)


def binary_format(head: bytes) -> tuple[str, str] | None:
  """(what it is, what to do) when `head`, a file's first bytes, is a known non-text format by its magic number
  or, for at least _SNIFF_MIN bytes, by its content (NUL and control bytes), else None."""
  for offset, magic, what, fix in _MAGIC:
    if head[offset:offset + len(magic)] == magic:
      if magic == b"PK\x03\x04" and head[30:30 + int.from_bytes(head[26:28], "little")].endswith(b".npy"):
        return "a NumPy archive (.npz)", _REMOVE
      return what, fix
  if len(head) >= 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < 100 << 20:
    return "a safetensors file", _REMOVE
  if len(head) >= _SNIFF_MIN:
    control = len(head) - len(head.translate(None, _CONTROL))
    if control > 0.05 * len(head):
      return (f"binary data ({control / len(head):.0%} of its first {len(head)} bytes are NUL or control bytes)",
              "remove it from the source or convert it to text")
  return None


def check_text(head: bytes, file: str, source: str) -> None:
  """Refuses a file whose first bytes say it is not text (an image, an archive, compressed data, NumPy arrays,
  binary data by content). Other bytes, valid UTF-8 or not, are text: bits per byte scores the bytes given."""
  found = binary_format(head)
  if found:
    raise DataError(f"data.source {source!r}: {file} is {found[0]}, not text; {found[1]}")


def split_text(data: bytes) -> list[bytes]:
  """One text as documents: its paragraphs (split at blank lines, which are dropped), or when it has no blank
  line, pieces of about PIECE_BYTES cut after a newline where one is near."""
  parts = [p for p in re.split(rb"\n[ \t\r\f\v]*\n\s*", data) if p.strip()]
  if len(parts) > 1:
    return parts
  if len(data) <= PIECE_BYTES:
    return [data]  # one paragraph, or only whitespace: the file as it is
  pieces, start = [], 0
  while start < len(data):
    end = min(start + PIECE_BYTES, len(data))
    if end < len(data):
      cut = data.rfind(b"\n", start + PIECE_BYTES // 2, end)
      end = cut + 1 if cut >= 0 else end
    pieces.append(data[start:end])
    start = end
  return pieces


def _text_documents(files: list[str], source: str, split_single: bool):
  for file in files:
    if _call_store(_epath(file).is_dir, file):  # resolve_paths keeps only datasets directories whole
      yield from _datasets_documents(file, "text", source)
      continue
    try:
      with _open(file) as f:
        data = f.read()
    except _READ_ERRORS + _zstd_error() as e:
      raise _read_failed(e, file, source) from None
    check_text(data[:8192], file, source)
    if split_single:
      yield from split_text(data)
    else:
      yield data


def describe_split(source: str) -> str:
  """How `source`'s files became documents, for messages about its splits."""
  if any((f := format_of(p.strip())) is not None and f.per_record for p in source.split(",") if p.strip()):
    return "one document per record"
  return "a single file is split at blank lines (or into ~64 KiB pieces without them), other files are one document each"


def _jsonl_documents(spec: str):
  path, sep, field = spec[len("jsonl:"):].rpartition(":")
  if not sep or not path or not field:
    raise DataError(f"data.source {spec!r}: expected 'jsonl:PATH:FIELD', e.g. 'jsonl:data/*.jsonl:text'")
  for file in resolve_paths(path, spec):
    yield from _jsonl_file(file, field, spec)


def _lines(f, file: str, spec: str):
  try:
    yield from enumerate(f, 1)
  except _READ_ERRORS + _zstd_error() as e:
    raise _read_failed(e, file, spec) from None


def _jsonl_file(file: str, field: str, spec: str):
  with _open(file) as f:
    for lineno, line in _lines(f, file, spec):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError as e:
        raise DataError(
            f"data.source {spec!r}: line {lineno} of {file} is not valid JSON ({e}); fix or remove that line"
        ) from None
      if not isinstance(record, dict) or field not in record:
        keys = ", ".join(map(str, record)) if isinstance(record, dict) else f"a JSON {type(record).__name__}"
        raise DataError(
            f"data.source {spec!r}: line {lineno} of {file} has no field {field!r} (keys: {keys}); "
            "use jsonl:PATH:KEY with one of them"
        )
      value = record[field]
      if not isinstance(value, str):
        raise DataError(
            f"data.source {spec!r}: line {lineno} of {file}: field {field!r} is {type_name(value)}, "
            "not a string; pick a text field"
        )
      yield value.encode("utf-8", errors="surrogatepass")


def _column_values(table_batch, column: str, where: str, spec: str):
  if column not in table_batch.schema.names:
    raise DataError(f"data.source {spec!r}: {where} has no column {column!r} (columns: "
                    f"{', '.join(table_batch.schema.names)}); name one of them")
  for value in table_batch.column(column).to_pylist():
    if value is None:
      continue
    if isinstance(value, str):
      yield value.encode("utf-8", errors="surrogatepass")
    elif isinstance(value, bytes):
      yield value
    else:
      raise DataError(f"data.source {spec!r}: column {column!r} of {where} holds {type_name(value)}, not text; "
                      "pick a text column")


def _parquet_documents(spec: str):
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  path, sep, column = spec[len("parquet:"):].rpartition(":")
  if not sep or not path or not column:
    raise DataError(f"data.source {spec!r}: expected 'parquet:PATH:COLUMN', e.g. 'parquet:data/*.parquet:text'")
  for file in resolve_paths(path, spec):
    if _call_store(_epath(file).is_dir, file):
      yield from _datasets_documents(file, column, spec)
      continue
    with _open(file) as f:
      try:
        pf = pq.ParquetFile(f)
      except Exception as e:  # pylint: disable=broad-except  # pyarrow raises ArrowInvalid and friends
        raise DataError(f"data.source {spec!r}: {file} is not a Parquet file ({str(e).splitlines()[0]})") from None
      for g in range(pf.num_row_groups):
        yield from _column_values(pf.read_row_group(g, columns=None), column, file, spec)


_DATASETS_FIX = "a datasets directory may only name its own files; save it again with save_to_disk"


def _datasets_documents(directory: str, column: str, spec: str):
  """Rows of a directory written by `datasets.Dataset.save_to_disk` (Arrow stream files listed in state.json)
  or `DatasetDict.save_to_disk` (one such directory per split, all splits read in the dict's order)."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  root = _epath(directory)
  if (root / "dataset_dict.json").exists():
    for split in json.loads((root / "dataset_dict.json").read_text())["splits"]:
      yield from _datasets_documents(inside(directory, split, f"{directory}/dataset_dict.json", _DATASETS_FIX),
                                     column, spec)
    return
  state = json.loads((root / "state.json").read_text())
  for entry in state.get("_data_files", []):
    file = _epath(inside(directory, entry["filename"], f"{directory}/state.json", _DATASETS_FIX))
    with file.open("rb") as f:
      reader = pa.ipc.open_stream(f)
      for batch in reader:
        yield from _column_values(batch, column, str(file), spec)


def _check_not_half_prepared(pattern: str, source: str) -> None:
  """A directory `lm prepare` wrote into but never finished has shards and no manifest: not a text corpus."""
  if is_remote(pattern) or not os.path.isdir(pattern):
    return
  names = os.listdir(pattern)
  if names == [".partial"]:
    raise DataError(f"data.source {source!r}: lm prepare into {pattern} was interrupted (it holds only .partial/); "
                    "rerun lm prepare")
  if ".partial" in names or "train.lengths" in names or any(n.endswith(".arrayrecord") for n in names):
    raise DataError(f"data.source {source!r}: {pattern} holds lm prepare output but no manifest.json (an interrupted "
                    "or older prepare); run lm prepare again into it")


def part_documents(part: str):
  """The documents of one comma-free source part that is not built in (a generator; nothing is kept)."""
  fmt = format_of(part)
  if fmt is not None:
    return fmt.documents(part)
  _check_not_half_prepared(os.path.expanduser(part), part)
  pattern = part if is_remote(part) else os.path.expanduser(part)
  files = resolve_paths(part, part)
  single = len(files) == 1 and not _has_magic(pattern) and not _call_store(_epath(pattern).is_dir, part)
  return _text_documents(files, part, split_single=single)


def part_size(part: str) -> tuple[int, int, int] | None:
  """(bytes on disk, documents known from the file count, files) of one part; compressed, jsonl, parquet and
  single split files count no documents (their records are only known by reading them). None where only
  building the documents tells (a format without `size`: synthetic data)."""
  fmt = format_of(part)
  if fmt is not None:
    return fmt.size(part) if fmt.size is not None else None
  return _paths_size(part, part)


def _record_pattern(part: str) -> str:
  """PATH of 'FORMAT:PATH:FIELD' (jsonl, parquet)."""
  prefix, _, rest = part.partition(":")
  pattern = rest.rpartition(":")[0]
  if not pattern:
    raise DataError(f"data.source {part!r}: expected '{prefix}:PATH:FIELD', e.g. '{prefix}:data/*:text'")
  return pattern


def _paths_size(pattern: str, part: str) -> tuple[int, int, int]:
  files = resolve_paths(pattern, part)
  n_bytes = 0
  for f in files:
    p = _epath(f)
    if _call_store(p.is_dir, f):
      n_bytes += sum(q.stat().length for q in p.rglob("*") if q.is_file())
    else:
      n_bytes += _call_store(lambda p=p: p.stat().length, f) if is_remote(f) else os.path.getsize(f)
  counted = pattern == part and len(files) > 1
  n_docs = sum(not f.lower().endswith((".gz", ".zst")) for f in files) if counted else 0
  return n_bytes, n_docs, len(files)


def fingerprint_entries(part: str) -> list:
  """What identifies a part's content cheaply: (path, size, mtime) of each file it reads; a format's own
  fingerprint, or for a format without one the part itself (generated data: `prepared.fingerprint` adds the
  Python version)."""
  fmt = format_of(part)
  if fmt is not None:
    return fmt.fingerprint(part) if fmt.fingerprint is not None else [part]
  return _files_fingerprint(part, part)


def _files_fingerprint(pattern: str, part: str) -> list:
  out = []
  for f in resolve_paths(pattern, part):
    p = _epath(f)
    paths = [q for q in p.rglob("*") if q.is_file()] if p.is_dir() else [p]
    for q in sorted(paths, key=str):
      st = q.stat()
      out.append([str(q), int(st.length), int(st.mtime)])
  return out


register_format("jsonl", size=lambda part: _paths_size(_record_pattern(part), part),
                fingerprint=lambda part: _files_fingerprint(_record_pattern(part), part))(_jsonl_documents)
register_format("parquet", size=lambda part: _paths_size(_record_pattern(part), part),
                fingerprint=lambda part: _files_fingerprint(_record_pattern(part), part))(_parquet_documents)
