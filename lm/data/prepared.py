"""`lm prepare`: a corpus tokenized once into ArrayRecord shards, read back lazily by training.

A prepared directory holds
  manifest.json                 format version, source and its fingerprint, settings, and per split the
                                documents, tokens and bytes, and the shard files with their records and sizes
                                (written last: a directory with a manifest is complete; every file it names
                                must be inside the directory)
  tokenizer/                    the tokenizer's files (`Tokenizer.save`)
  train-NNNNN.arrayrecord       one record per train document: its token ids, little-endian uint16 (vocab
                                <= 65536) or uint32
  train.lengths                 int64 token count of every train document in record order (the packer plans
                                rows from these alone, so a process opens only the records of its own rows)
  val-NNNNN.arrayrecord, test-  one record per held-out document: its text bytes (eval cuts them into segments
                                and tokenizes those, as for in-memory sources)

The split is decided here, by the same keyed content hash as in memory; the BPE tokenizer is trained on a
bounded sample of the train split (`sample_bytes`). Work happens in `<out>/.partial/`; an interrupted prepare
is restarted from scratch on the next run, and a finished one is a no-op for the same source and settings.
"""

import collections
import hashlib
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import time

from etils import epath
import numpy as np

from lm.data import corpus, sources
from lm.data import tokenizers as tokenizers_lib
from lm.errors import DataError, plural, type_name
from lm.paths import inside

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
_PARTIAL = ".partial"
_TASK_BYTES = 4 << 20


def is_prepared(path: str) -> bool:
  """Whether `path` is a directory with a prepared corpus's manifest (local or gs://)."""
  if path in corpus.BUILTIN_SOURCES or sources.format_of(path) is not None:
    return False
  try:
    return (epath.Path(path) / MANIFEST).exists()
  except ImportError as e:
    raise DataError(f"{path!r}: {e}; pip install gcsfs (or lm[gcs])") from None
  except OSError:
    return False


def read_manifest(path: str) -> dict:
  p = epath.Path(path) / MANIFEST
  try:
    manifest = json.loads(p.read_text())
  except (OSError, ValueError) as e:
    raise DataError(f"prepared data {path!r}: cannot read {MANIFEST} ({type(e).__name__}); run lm prepare again") from None
  version = manifest.get("format_version") if isinstance(manifest, dict) else None
  if version != FORMAT_VERSION:
    raise DataError(f"prepared data {path!r}: format version {version!r}, this lm reads version {FORMAT_VERSION}; "
                    f"run lm prepare again with this version")
  return manifest


def fingerprint(source: str) -> str:
  """A digest of what `source` reads: files' paths, sizes and mtimes; built-in and synthetic sources by name and
  the Python that builds them."""
  entries = []
  for part in [p.strip() for p in source.split(",") if p.strip()]:
    fmt = None if part in corpus.BUILTIN_SOURCES else sources.format_of(part)
    if part in corpus.BUILTIN_SOURCES or (fmt is not None and fmt.fingerprint is None):
      entries.append([part, sys.version])
    else:
      entries.append([part, sources.fingerprint_entries(part)])
  return hashlib.blake2b(json.dumps(entries).encode(), digest_size=16).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Writing.


def _sample_key(doc: bytes, seed: int) -> int:
  h = hashlib.blake2b(doc, digest_size=8, key=b"sample" + int(seed).to_bytes(8, "little", signed=True))
  return int.from_bytes(h.digest(), "little")


def _tokenizer_sample(source: str, settings: dict, est_bytes: int | None) -> list[bytes]:
  """Train documents for BPE: each kept with probability sample_bytes / corpus bytes (by a keyed hash, so the
  sample spreads over the whole corpus), until sample_bytes are held."""
  budget = settings["tokenizer_sample_bytes"]
  rate = 1.0 if not est_bytes else min(1.0, budget / est_bytes)
  out, held = [], 0
  for doc in corpus.iter_documents(source):
    if corpus.split_of(doc, settings) != "train" or _sample_key(doc, settings["split_seed"]) >= rate * 2.0**64:
      continue
    out.append(doc)
    held += len(doc)
    if held >= budget:
      break
  return out


_worker_tokenizer = None


def _init_worker(files):
  global _worker_tokenizer
  _worker_tokenizer = tokenizers_lib.tokenizer_from_files(files)


def _encode_task(docs: list[bytes], settings: dict, dtype: str):
  """(split, record bytes, token count, text bytes) per document; train records are ids, held-out ones text."""
  out = []
  which = [corpus.split_of(d, settings) for d in docs]
  train = [d for d, w in zip(docs, which) if w == "train"]
  ids = iter(_worker_tokenizer.encode_batch(train) if train else [])
  for doc, w in zip(docs, which):
    if w == "train":
      x = np.asarray(next(ids)).astype(dtype)
      out.append((w, x.tobytes(), len(x), len(doc)))
    else:
      out.append((w, doc, 0, len(doc)))
  return out


def _tasks(source: str):
  batch, size = [], 0
  for doc in corpus.iter_documents(source):
    batch.append(doc)
    size += len(doc)
    if size >= _TASK_BYTES:
      yield batch
      batch, size = [], 0
  if batch:
    yield batch


class _ShardWriter:
  """Records of one split into `<split>-NNNNN.arrayrecord` files of about `shard_bytes` each."""

  def __init__(self, directory: str, split: str, shard_bytes: int):
    self.directory, self.split, self.shard_bytes = directory, split, shard_bytes
    self.files, self.counts, self.writer, self.size = [], [], None, 0

  def write(self, record: bytes) -> None:
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    if self.writer is None or self.size >= self.shard_bytes:
      self.close()
      name = f"{self.split}-{len(self.files):05d}.arrayrecord"
      self.writer = array_record_module.ArrayRecordWriter(os.path.join(self.directory, name), "group_size:1")
      self.files.append(name)
      self.counts.append(0)
      self.size = 0
    self.writer.write(record)
    self.counts[-1] += 1
    self.size += len(record)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.writer = None


def _progress(total: int | None, enabled: bool):
  if not enabled:
    return None
  try:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return tqdm(total=total, unit="B", unit_scale=True, desc="lm prepare", file=sys.stderr, mininterval=1.0)


def prepare(source: str, out: str, tokenizer: str = "bpe", vocab_size: int = 4096, workers: int = 2,
            tokenizer_sample_bytes: int = 64 << 20, val_fraction: float = 0.02, test_fraction: float = 0.02,
            split_seed: int = 0, shard_bytes: int = 256 << 20, progress: bool = True) -> dict:
  """Prepares `source` into `out` (see the module docstring); returns the manifest. Re-running with the same
  source and settings returns the existing manifest without work."""
  if sources.is_remote(out):
    raise DataError(f"lm prepare --out {out!r}: write to a local directory, then copy it (gsutil -m cp -r) to the "
                    "bucket; training reads gs:// directly")
  tokenizers_lib.check_spec(tokenizer)
  if workers < 0 or vocab_size < 1 or tokenizer_sample_bytes < 1 or shard_bytes < 1:
    raise DataError("lm prepare: --workers must be >= 0 and --vocab-size, --tokenizer-sample-bytes, shard bytes >= 1")
  if is_prepared(source):
    raise DataError(f"lm prepare: {source!r} is already a prepared directory; train on it directly "
                    "(--config.data.source=DIR)")
  corpus.check_fractions(val_fraction, test_fraction)
  settings = dict(tokenizer=tokenizer, vocab_size=int(vocab_size), val_fraction=float(val_fraction),
                  test_fraction=float(test_fraction), split_seed=int(split_seed),
                  tokenizer_sample_bytes=int(tokenizer_sample_bytes))
  if tokenizer not in ("bytes", "bpe"):
    settings["tokenizer_file"] = hashlib.blake2b(
        json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in
                          tokenizers_lib.build_tokenizer(tokenizer, [], vocab_size).files().items())).encode(),
        digest_size=16).hexdigest()
  size = corpus.source_size(source)
  print_fn = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
  digest = fingerprint(source)
  os.makedirs(out, exist_ok=True)
  if os.path.exists(os.path.join(out, MANIFEST)):
    manifest = read_manifest(out)
    if manifest.get("fingerprint") == digest and manifest.get("settings") == settings:
      print_fn(f"lm prepare: {out} already holds {source!r} with these settings; nothing to do")
      return manifest
    raise DataError(f"lm prepare: {out} holds another prepared corpus ({manifest.get('source')!r}, "
                    f"{manifest.get('settings')}); pass another --out or delete it")
  partial = os.path.join(out, _PARTIAL)
  others = [n for n in os.listdir(out) if n != _PARTIAL]
  if others:
    raise DataError(f"lm prepare: --out {out} is not empty and holds no manifest ({', '.join(sorted(others)[:3])}"
                    "...); pass an empty or new directory")
  if os.path.exists(partial):
    print_fn(f"lm prepare: an earlier prepare into {out} was interrupted; starting over")
    shutil.rmtree(partial)
  os.makedirs(partial)
  t0 = time.time()

  if tokenizer == "bpe":
    print_fn(f"lm prepare: training BPE ({vocab_size}) on a sample of up to {tokenizer_sample_bytes / 2**20:.0f} MiB "
             "of the train split")
    sample = _tokenizer_sample(source, settings, size[0] if size else None)
    if not sample:
      raise DataError(f"lm prepare: {source!r} gives no train documents to train the tokenizer on; add text")
    tok = tokenizers_lib.train_bpe(sample, vocab_size)
    del sample
  else:
    tok = tokenizers_lib.build_tokenizer(tokenizer, [], vocab_size)
  files = tok.files()
  dtype = "<u2" if tok.vocab_size <= 1 << 16 else "<u4"
  writers = {s: _ShardWriter(partial, s, shard_bytes) for s in SPLITS}
  counts = {s: collections.Counter() for s in SPLITS}
  lengths_file = open(os.path.join(partial, "train.lengths"), "wb")
  bar = _progress(size[0] if size else None, progress)

  def consume(results):
    lengths = []
    for split, record, n_tokens, n_bytes in results:
      writers[split].write(record)
      c = counts[split]
      c["documents"] += 1
      c["tokens"] += n_tokens
      c["bytes"] += n_bytes
      if split == "train":
        lengths.append(n_tokens)
      if bar is not None:
        bar.update(n_bytes)
    lengths_file.write(np.asarray(lengths, dtype="<i8").tobytes())

  try:
    if workers <= 1:
      _init_worker(files)
      for task in _tasks(source):
        consume(_encode_task(task, settings, dtype))
    else:
      ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "forkserver")
      with ctx.Pool(workers, initializer=_init_worker, initargs=(files,)) as pool:
        pending = collections.deque()
        for task in _tasks(source):  # at most 2 tasks per worker in flight: memory stays bounded
          pending.append(pool.apply_async(_encode_task, (task, settings, dtype)))
          if len(pending) >= 2 * workers:
            consume(pending.popleft().get())
        while pending:
          consume(pending.popleft().get())
  except BaseException:
    if bar is not None:
      bar.leave = False  # the bar is wiped, so the error is the one line left on the terminal
    raise
  finally:
    for w in writers.values():
      w.close()
    lengths_file.close()
    if bar is not None:
      bar.close()
  for split, fraction in (("val", val_fraction), ("test", test_fraction)):
    if counts[split]["documents"] == 0 and fraction > 0:
      shutil.rmtree(partial)
      raise DataError(f"lm prepare: {source!r} gives an empty {split} split ({plural(counts['train']['documents'], 'train document')}; "
                      f"{sources.describe_split(source)}); add documents or raise the {split} fraction")
  if counts["train"]["tokens"] == 0:
    shutil.rmtree(partial)
    raise DataError(f"lm prepare: {source!r} gives no train tokens; add text")
  tok.save(os.path.join(partial, "tokenizer"))
  manifest = dict(
      format_version=FORMAT_VERSION, source=source, fingerprint=digest, settings=settings,
      tokenizer=dict(dir="tokenizer", kind=tok.kind, vocab_size=tok.vocab_size), dtype=dtype,
      splits={s: dict(documents=counts[s]["documents"], tokens=counts[s]["tokens"], bytes=counts[s]["bytes"],
                      shards=writers[s].files, records=writers[s].counts,
                      shard_sizes=[os.path.getsize(os.path.join(partial, f)) for f in writers[s].files])
              for s in SPLITS},
      train_lengths="train.lengths", seconds=round(time.time() - t0, 1),
  )
  for name in os.listdir(partial):
    os.replace(os.path.join(partial, name), os.path.join(out, name))
  os.rmdir(partial)
  corpus.atomic_write(pathlib.Path(out) / MANIFEST, json.dumps(manifest, indent=2).encode())
  return manifest


# ---------------------------------------------------------------------------------------------------------
# Reading.


class _Records:
  """Random access to one split's records (grain's ArrayRecordDataSource), opened on first use and reopened in
  each process it is pickled into; `opened` counts the records read, for tests of per-process reading."""

  def __init__(self, directory: str, split: dict, name: str):
    self.paths = [_inside(directory, s) for s in split["shards"]]
    self.name, self.n, self.records = name, int(split["documents"]), split.get("records")
    self._source = None
    self.opened = 0

  def __getstate__(self):
    return dict(self.__dict__, _source=None)

  def _damaged(self, path: str, e: Exception):
    why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return DataError(f"prepared data: {path} ({self.name} split) is damaged or truncated ({why}); "
                     "run lm prepare again")

  @property
  def source(self):
    if self._source is None:
      import grain  # pylint: disable=import-outside-toplevel
      try:
        self._source = grain.sources.ArrayRecordDataSource(self.paths)
      except Exception as e:  # pylint: disable=broad-except  # array_record raises bare RuntimeErrors
        raise self._damaged(self._failing(e), e) from None
      if len(self._source) < self.n:
        raise DataError(f"prepared data: the {self.name} split's shards hold {len(self._source)} records, "
                        f"{MANIFEST} counts {self.n} documents; run lm prepare again")
    return self._source

  def _failing(self, e: Exception) -> str:
    """The shard that cannot be opened (array_record's message names none)."""
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    for path in self.paths:
      try:
        array_record_module.ArrayRecordReader(path).close()
      except Exception:  # pylint: disable=broad-except
        return path
    return f"one of {self.paths[0]}..."

  def __len__(self) -> int:
    return len(self.source)

  def get(self, indices) -> list[bytes]:
    indices = [int(i) for i in indices]
    self.opened += len(indices)
    source = self.source
    try:
      return source._getitems(indices) if hasattr(source, "_getitems") else [source[i] for i in indices]
    except Exception as e:  # pylint: disable=broad-except  # Riegeli's "Corrupted ... file" RuntimeError
      path = f"one of {self.paths[0]}..."
      if self.records and indices:
        path = self.paths[min(int(np.searchsorted(np.cumsum(self.records), indices[0], side="right")),
                              len(self.paths) - 1)]
      raise self._damaged(path, e) from None


class RecordStore:
  """Train documents of a prepared directory: `lengths` (token counts, memory-mapped) and `get(doc indices)`."""

  def __init__(self, directory: str, manifest: dict):
    self.directory, self.dtype = directory, manifest["dtype"]
    split = manifest["splits"]["train"]
    self.records = _Records(directory, split, "train")
    self.n = int(split["documents"])
    self._lengths = None

  def __getstate__(self):
    return dict(self.__dict__, _lengths=None)

  @property
  def lengths(self):
    if self._lengths is None:
      path = epath.Path(self.directory) / "train.lengths"
      if sources.is_remote(self.directory):
        raw = path.read_bytes()
        if len(raw) != 8 * self.n:
          raise DataError(_lengths_mismatch(self.directory, len(raw), self.n))
        self._lengths = np.frombuffer(raw, dtype="<i8")
      else:
        self._lengths = np.memmap(str(path), dtype="<i8", mode="r", shape=(self.n,))
    return self._lengths

  def get(self, docs) -> list[np.ndarray]:
    return [np.frombuffer(r, dtype=self.dtype).astype(np.int32) for r in self.records.get(docs)]


class HeldOutTexts(collections.abc.Sequence):
  """A held-out split's documents (bytes), read from their records on demand."""

  def __init__(self, directory: str, manifest: dict, split: str):
    self.records = _Records(directory, manifest["splits"][split], split)
    self.n = int(manifest["splits"][split]["documents"])

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i):
    if isinstance(i, slice):
      return self.records.get(range(*i.indices(self.n)))
    if not -self.n <= i < self.n:
      raise IndexError(i)
    return self.records.get([i % self.n])[0]

  def __iter__(self):
    for start in range(0, self.n, 1024):
      yield from self.records.get(range(start, min(start + 1024, self.n)))


def _inside(directory: str, name) -> str:
  return inside(directory, name, f"prepared data {directory!r}: {MANIFEST}", "run lm prepare again")


def _lengths_mismatch(directory: str, size: int, documents: int) -> str:
  return (f"prepared data {directory!r}: train.lengths is {size} bytes, {MANIFEST} counts {documents} train documents "
          f"({8 * documents} bytes); the file is truncated or from another prepare: run lm prepare again")


def check_manifest(path: str, manifest: dict) -> None:
  """One line for a manifest that lacks a key, names a file outside `path`, or disagrees with the sizes of the
  files it names (local directories: sizes are read, nothing is opened)."""
  where = f"prepared data {path!r}: {MANIFEST}"

  def need(*keys, kind=None):
    value = manifest
    for i, k in enumerate(keys):
      if not isinstance(value, dict) or k not in value:
        raise DataError(f"{where} has no {'.'.join(keys[:i + 1])}; run lm prepare again")
      value = value[k]
    if kind is not None and not (isinstance(value, kind) and not isinstance(value, bool)):
      raise DataError(f"{where}: {'.'.join(keys)}={value!r} is not {type_name(kind)}; run lm prepare again")
    return value

  if need("dtype") not in ("<u2", "<u4"):
    raise DataError(f"{where}: dtype {manifest['dtype']!r} is not <u2 or <u4; run lm prepare again")
  _inside(path, need("tokenizer", "dir", kind=str))
  remote = sources.is_remote(path)
  for split in SPLITS:
    documents = need("splits", split, "documents", kind=int)
    shards, records = need("splits", split, "shards", kind=list), manifest["splits"][split].get("records")
    sizes = manifest["splits"][split].get("shard_sizes")
    if documents < 0 or (records is not None and (len(records) != len(shards) or sum(records) != documents)):
      raise DataError(f"{where}: the {split} split counts {documents} documents, its {len(shards)} shards "
                      f"{sum(records or [])} records; run lm prepare again")
    for i, name in enumerate(shards):
      file = _inside(path, name)
      if remote:
        continue
      if not os.path.isfile(file):
        raise DataError(f"{where} names {name}, which is missing; copy the whole directory or run lm prepare again")
      if sizes is not None and i < len(sizes) and os.path.getsize(file) != sizes[i]:
        raise DataError(f"prepared data {path!r}: {name} is {os.path.getsize(file)} bytes, {MANIFEST} recorded "
                        f"{sizes[i]} (truncated or changed); run lm prepare again")
  if not remote:
    lengths = os.path.join(path, "train.lengths")
    size = os.path.getsize(lengths) if os.path.isfile(lengths) else 0
    if size != 8 * manifest["splits"]["train"]["documents"]:
      raise DataError(_lengths_mismatch(path, size, manifest["splits"]["train"]["documents"]))


def open_prepared(path: str):
  """(manifest, tokenizer, train store, {val, test: held-out texts}) of a prepared directory."""
  manifest = read_manifest(path)
  check_manifest(path, manifest)
  try:
    tok = tokenizers_lib.load_tokenizer(_inside(path, manifest["tokenizer"]["dir"]))
  except DataError as e:
    raise DataError(f"prepared data {path!r}: {str(e).rpartition('; ')[0] or e}; run lm prepare again") from None
  held_out = {s: HeldOutTexts(path, manifest, s) for s in ("val", "test")}
  return manifest, tok, RecordStore(path, manifest), held_out
