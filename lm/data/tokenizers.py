"""Tokenizers: raw bytes, byte-level BPE (trained with `tokenizers`, cached), tokenizer.json and .model files,
Hugging Face model directories (`hf_tokenizer.py`).

All of them map `bytes -> int32 ids` without adding special tokens; the pipeline adds bos/eos itself.
`unit_bytes()[id]` is how many bytes of text an id stands for, with eos counted as one byte (the
end-of-segment event), so bits per byte of a training batch is `nll / (ln 2 * sum(unit_bytes[targets]))`.
"""

import hashlib
import json
import os
import pathlib

from etils import epath
import numpy as np
import tokenizers as hf
from tokenizers import decoders, models, pre_tokenizers, trainers

from lm.data.corpus import atomic_write, cache_dir
from lm.errors import DataError, type_name

META_FILE = "tokenizer_meta.json"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
# Names other tokenizers give the same roles, tried in order when loading a file we did not train.
_SPECIAL_ALIASES = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "bos": ("<bos>", "<s>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]", "<|endoftext|>"),
    "eos": ("<eos>", "</s>", "<|end_of_text|>", "<|endoftext|>", "[SEP]"),
}
_SPEC_HELP = ("use 'bytes', 'bpe', a tokenizer.json path, a SentencePiece .model path or a Hugging Face model "
              "directory (tokenizer.json + tokenizer_config.json)")


class Tokenizer:
  """Base class; subclasses fill `_id_bytes` (bytes per id) or override `decode_bytes`/`unit_bytes`."""

  kind = ""

  def __init__(self, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
    self.vocab_size, self.pad_id, self.bos_id, self.eos_id = int(vocab_size), int(pad_id), int(bos_id), int(eos_id)
    self._id_bytes: list[bytes] | None = None

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(vocab_size={self.vocab_size}, "
            f"pad={self.pad_id}, bos={self.bos_id}, eos={self.eos_id})")

  def encode(self, data: bytes) -> np.ndarray:
    """Token ids of `data` as int32, no special tokens added."""
    raise NotImplementedError

  def encode_batch(self, datas: list[bytes]) -> list[np.ndarray]:
    return [self.encode(d) for d in datas]

  def prompt_ids(self, text: str) -> np.ndarray:
    """A prompt as a model reads it: the document-start id, then the text's ids."""
    return np.concatenate([[self.bos_id], self.encode(text.encode("utf-8"))]).astype(np.int32)

  def decode_bytes(self, ids) -> bytes:
    """The bytes that `ids` stand for; special ids are dropped."""
    table = self._id_bytes
    return b"".join(table[i] for i in np.asarray(ids).ravel().tolist() if 0 <= i < len(table))

  def id_bytes(self) -> list[bytes]:
    """The bytes each id stands for (b"" for special ids): what byte-level constraints and probabilities use."""
    return list(self._id_bytes)

  def decode(self, ids) -> str:
    """Text of `ids`; invalid UTF-8 becomes U+FFFD and special ids are dropped."""
    return self.decode_bytes(ids).decode("utf-8", errors="replace")

  def unit_bytes(self) -> np.ndarray:
    """int32 [vocab_size]: bytes of text per id; eos counts 1 (end of segment), pad/bos 0."""
    out = np.array([len(b) for b in self._id_bytes], dtype=np.int32)
    out[[self.pad_id, self.bos_id]] = 0
    out[self.eos_id] = 1
    return out

  def _meta(self) -> dict:
    return dict(kind=self.kind, vocab_size=self.vocab_size, pad_id=self.pad_id, bos_id=self.bos_id, eos_id=self.eos_id)

  def files(self) -> dict[str, bytes]:
    """Everything that defines this tokenizer: its own files plus `tokenizer_meta.json`."""
    return {**self._files(), META_FILE: json.dumps(self._meta(), indent=2).encode()}

  def save(self, directory) -> None:
    """Writes `files()` into `directory` (local or e.g. gs://)."""
    files = self.files()
    if "://" in str(directory):  # Object stores write whole objects; there is no partial file to avoid.
      directory = epath.Path(directory)
      directory.mkdir(parents=True, exist_ok=True)
      for name, data in files.items():
        (directory / name).write_bytes(data)
    else:
      for name, data in files.items():
        atomic_write(pathlib.Path(directory) / name, data)

  def _files(self) -> dict[str, bytes]:
    return {}


class ByteTokenizer(Tokenizer):
  """Ids 0..255 are byte values; pad=256, bos=257, eos=258."""

  kind = "bytes"

  def __init__(self):
    super().__init__(vocab_size=259, pad_id=256, bos_id=257, eos_id=258)
    self._id_bytes = [bytes([i]) for i in range(256)] + [b""] * 3

  def encode(self, data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

  def decode_bytes(self, ids) -> bytes:
    ids = np.asarray(ids).ravel()
    return ids[(ids >= 0) & (ids < 256)].astype(np.uint8).tobytes()


# ---------------------------------------------------------------------------------------------------------
# HuggingFace tokenizers.


def _first_line(e: Exception) -> str:
  return (str(e).splitlines() or [type(e).__name__])[0]


def _drop_specials(ids, base_size: int, tok: Tokenizer) -> list[int]:
  """Ids the wrapped library knows, without pad/bos/eos (which may lie beyond its vocabulary)."""
  specials = (tok.pad_id, tok.bos_id, tok.eos_id)
  return [i for i in np.asarray(ids).ravel().tolist() if 0 <= i < base_size and i not in specials]


def _byte_level_table() -> dict[str, int]:
  """GPT-2's printable stand-in character for each byte (what the ByteLevel pre-tokenizer emits), inverted."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  table, extra = {}, 0
  for b in range(256):
    if b in printable:
      table[chr(b)] = b
    else:
      table[chr(256 + extra)] = b
      extra += 1
  return table


def _is_byte_level(tokenizer_json: dict) -> bool:
  decoder = tokenizer_json.get("decoder") or {}
  parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
  return any((p or {}).get("type") == "ByteLevel" for p in parts)


def _piece_bytes(piece: str) -> bytes:
  """Best-effort bytes of a non-byte-level piece: SentencePiece's '▁' is a space, '<0xNN>' one byte."""
  if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
    try:
      return bytes([int(piece[3:5], 16)])
    except ValueError:
      pass
  return piece.replace("▁", " ").encode("utf-8")


def _find_specials(lookup, base_size: int) -> tuple[dict[str, int], int]:
  """pad/bos/eos ids by name (via `lookup(name) -> id | None`); missing ones get new ids after the vocab."""
  ids, size = {}, base_size
  for role in ("pad", "bos", "eos"):
    found = [i for i in map(lookup, _SPECIAL_ALIASES[role]) if i is not None]
    if found:
      ids[role] = found[0]
    else:
      ids[role], size = size, size + 1
  return ids, size


class BPETokenizer(Tokenizer):
  """A HuggingFace `tokenizers.Tokenizer` (byte-level BPE when we train it, any tokenizer.json when loaded)."""

  kind = "bpe"

  def __init__(self, tokenizer: hf.Tokenizer):
    self._tok = tokenizer
    # Text that happens to contain "<eos>" must stay text, or a document could inject special ids.
    self._tok.encode_special_tokens = True
    base_size = tokenizer.get_vocab_size(with_added_tokens=True)
    ids, size = _find_specials(tokenizer.token_to_id, base_size)
    super().__init__(size, ids["pad"], ids["bos"], ids["eos"])
    added = tokenizer.get_added_tokens_decoder()
    self._byte_level = _is_byte_level(json.loads(tokenizer.to_str()))
    if self._byte_level:
      chars = _byte_level_table()
      table = []
      for i in range(base_size):
        token = tokenizer.id_to_token(i)
        if i in added:  # Added tokens are stored as plain text, not in the byte alphabet.
          table.append(b"" if added[i].special else added[i].content.encode("utf-8"))
        elif token is None:
          table.append(b"")
        else:
          table.append(bytes(chars[c] for c in token) if all(c in chars for c in token) else token.encode("utf-8"))
    else:
      table = [b"" if i in added and added[i].special else _piece_bytes(tokenizer.id_to_token(i) or "")
               for i in range(base_size)]
    table += [b""] * (size - base_size)
    for i in (self.pad_id, self.bos_id, self.eos_id):
      table[i] = b""
    self._id_bytes = table

  @classmethod
  def from_file(cls, path) -> "BPETokenizer":
    try:
      return cls(hf.Tokenizer.from_str(epath.Path(path).read_text()))
    except Exception as e:  # The library raises bare Exceptions for malformed files.
      raise DataError(
          f"tokenizer {str(path)!r}: cannot load tokenizer.json ({_first_line(e)}); "
          "pass a valid HuggingFace tokenizer.json"
      ) from None

  def encode(self, data: bytes) -> np.ndarray:
    # Invalid UTF-8 becomes U+FFFD before encoding, so such bytes do not round-trip; bits per byte stays
    # honest because evaluation counts the original source bytes, not the bytes the ids decode to.
    ids = self._tok.encode(data.decode("utf-8", errors="replace"), add_special_tokens=False).ids
    return np.asarray(ids, dtype=np.int32)

  def encode_batch(self, datas: list[bytes]) -> list[np.ndarray]:
    texts = [d.decode("utf-8", errors="replace") for d in datas]
    return [np.asarray(e.ids, dtype=np.int32) for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]

  def decode_bytes(self, ids) -> bytes:
    if self._byte_level:
      return super().decode_bytes(ids)
    keep = _drop_specials(ids, self._tok.get_vocab_size(with_added_tokens=True), self)
    return self._tok.decode(keep, skip_special_tokens=True).encode("utf-8")

  def _files(self) -> dict[str, bytes]:
    return {"tokenizer.json": self._tok.to_str().encode("utf-8")}


HF_CONFIG = "tokenizer_config.json"


def is_hf_dir(path) -> bool:
  return os.path.isfile(os.path.join(os.path.expanduser(str(path)), "tokenizer.json"))


def _reject_tiktoken(path: str) -> None:
  """Llama 3's original `tokenizer.model` is tiktoken's text format, not a SentencePiece proto."""
  with open(path, "rb") as f:
    head = f.read(256).split(b"\n")[0].split(b" ")
  if len(head) == 2 and head[1].strip().isdigit():
    raise DataError(f"tokenizer {path!r} is a tiktoken BPE file, not SentencePiece; pass the Hugging Face model "
                    "directory (with tokenizer.json) instead")


def _bpe_cache_key(train_docs: list[bytes], vocab_size: int) -> str:
  h = hashlib.blake2b(digest_size=16)
  h.update(f"bpe-v1|{vocab_size}|{hf.__version__}|{len(train_docs)}|".encode())
  for d in train_docs:
    h.update(len(d).to_bytes(8, "little"))
    h.update(d)
  return h.hexdigest()


def train_bpe(train_docs: list[bytes], vocab_size: int) -> BPETokenizer:
  """Byte-level BPE trained on `train_docs`, cached in cache_dir()/tokenizers by content hash.

  On a tiny corpus BPE runs out of merges, so the result's `vocab_size` may be below the one asked for.
  """
  min_size = 256 + len(SPECIAL_TOKENS)
  if vocab_size < min_size:
    raise DataError(
        f"tokenizer 'bpe': vocab_size={vocab_size} is below {min_size} (256 bytes + 3 specials); "
        f"set vocab_size >= {min_size}"
    )
  if not train_docs:
    raise DataError("tokenizer 'bpe': no training documents; give the train split some text")
  path = cache_dir() / "tokenizers" / f"{_bpe_cache_key(train_docs, vocab_size)}.json"
  if path.exists():
    try:
      return BPETokenizer(hf.Tokenizer.from_file(str(path)))
    except Exception:  # pylint: disable=broad-except
      pass  # A corrupt cache entry is retrained, not fatal.
  tok = hf.Tokenizer(models.BPE())
  # No prefix space: encode(decode(x)) must give back exactly x.
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  texts = (d.decode("utf-8", errors="replace") for d in train_docs)
  tok.train_from_iterator(texts, trainer, length=len(train_docs))
  try:
    atomic_write(path, tok.to_str().encode("utf-8"))
  except OSError:
    pass  # Unwritable cache: still usable, retrained next time.
  return BPETokenizer(tok)


# ---------------------------------------------------------------------------------------------------------
# SentencePiece.


def load_tokenizer(directory) -> Tokenizer:
  """Loads a tokenizer written by `Tokenizer.save(directory)`."""
  directory = epath.Path(directory)
  if not (directory / META_FILE).exists():
    raise DataError(
        f"tokenizer directory {str(directory)!r}: no {META_FILE}; pass a directory written by Tokenizer.save"
    )
  files = {p.name: p.read_bytes() for p in directory.iterdir() if p.name in _FILE_NAMES}
  return tokenizer_from_files(files, f"tokenizer directory {str(directory)!r}")


_FILE_NAMES = (META_FILE, "tokenizer.json", "tokenizer.model", HF_CONFIG)


def tokenizer_from_files(files: dict[str, bytes], where: str = "tokenizer") -> Tokenizer:
  """The inverse of `Tokenizer.files()`; `where` names the origin in errors (a directory, a checkpoint)."""
  if META_FILE not in files:
    raise DataError(f"{where}: no {META_FILE}; save the tokenizer with Tokenizer.save")
  try:
    meta = json.loads(files[META_FILE])
  except ValueError as e:
    raise DataError(f"{where}: {META_FILE} is not JSON ({e}); re-save the tokenizer") from None
  if not isinstance(meta, dict):
    raise DataError(f"{where}: {META_FILE} holds {type_name(meta)}, not a JSON object; re-save the tokenizer")
  kind = meta.get("kind")
  try:
    if kind == "bytes":
      tok = ByteTokenizer()
    elif kind == "bpe":
      tok = BPETokenizer(hf.Tokenizer.from_str(files["tokenizer.json"].decode("utf-8")))
    elif kind == "hf":
      from lm.data.hf_tokenizer import HFTokenizer  # pylint: disable=import-outside-toplevel
      tok = HFTokenizer(hf.Tokenizer.from_str(files["tokenizer.json"].decode("utf-8")),
                        json.loads(files[HF_CONFIG]), where)
    elif kind == "sentencepiece":
      from lm.data.spm import SentencePieceTokenizer  # pylint: disable=import-outside-toplevel
      tok = SentencePieceTokenizer(files["tokenizer.model"])
    else:
      raise DataError(f"{where}: unknown kind {kind!r} in {META_FILE}; expected bytes, bpe, hf or sentencepiece")
  except KeyError as e:
    raise DataError(f"{where}: {kind} tokenizer without its file {e.args[0]!r}; re-save the tokenizer") from None
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # `tokenizers` raises bare Exceptions.
    raise DataError(f"{where}: cannot load the {kind} tokenizer ({_first_line(e)}); re-save it") from None
  found = tok._meta()  # pylint: disable=protected-access
  if found != meta:
    raise DataError(f"{where}: files disagree with {META_FILE} ({found} vs {meta}); re-save the tokenizer")
  return tok


def check_spec(spec: str) -> None:
  """The one-line error `build_tokenizer` would raise for `spec`, without reading or training anything."""
  if spec in ("bytes", "bpe"):
    return
  path = os.path.expanduser(spec)
  if spec.endswith((".json", ".model")):
    if not os.path.isfile(path):
      raise DataError(f"tokenizer {spec!r}: file does not exist; {_SPEC_HELP}")
  elif not os.path.isfile(os.path.join(path, META_FILE)) and not is_hf_dir(path):
    raise DataError(f"tokenizer {spec!r} is not a known tokenizer; {_SPEC_HELP}")


def build_tokenizer(spec: str, train_docs: list[bytes], vocab_size: int) -> Tokenizer:
  """`bytes`, `bpe` (trained on train_docs), `PATH.json` (HuggingFace), `PATH.model` (SentencePiece), a saved
  dir or a Hugging Face model dir."""
  if spec == "bytes":
    return ByteTokenizer()
  if spec == "bpe":
    return train_bpe(train_docs, vocab_size)
  path = os.path.expanduser(spec)
  is_file_spec = spec.endswith((".json", ".model"))
  if is_file_spec and not os.path.isfile(path):
    raise DataError(f"tokenizer {spec!r}: file does not exist; {_SPEC_HELP}")
  if spec.endswith(".json"):
    return BPETokenizer.from_file(path)
  if spec.endswith(".model"):
    _reject_tiktoken(path)
    from lm.data.spm import SentencePieceTokenizer  # pylint: disable=import-outside-toplevel
    return SentencePieceTokenizer.from_file(path)
  if os.path.isfile(os.path.join(path, META_FILE)):
    return load_tokenizer(path)
  if is_hf_dir(path):
    from lm.data.hf_tokenizer import HFTokenizer  # pylint: disable=import-outside-toplevel
    return HFTokenizer.from_dir(path)
  raise DataError(f"tokenizer {spec!r} is not a known tokenizer; {_SPEC_HELP}")
