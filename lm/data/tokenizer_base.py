"""What every tokenizer is: the `Tokenizer` interface, raw bytes, byte-level BPE over a `tokenizers` model, and the
helpers the SentencePiece (`spm.py`) and Hugging Face (`hf_tokenizer.py`) kinds share. Which tokenizer a spec
or a saved directory names is `tokenizers.py`'s business (it imports every kind; no kind imports it).

All of them map `bytes -> int32 ids` without adding special tokens; the pipeline adds bos/eos itself.
`unit_bytes()[id]` is how many bytes of text an id stands for, with eos counted as one byte (the
end-of-segment event), so bits per byte of a training batch is `nll / (ln 2 * sum(unit_bytes[targets]))`.
"""


import json
import pathlib

from etils import epath
import numpy as np
import tokenizers as hf

from lm.data.corpus import atomic_write
from lm.errors import DataError

META_FILE = "tokenizer_meta.json"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
# Names other tokenizers give the same roles, tried in order when loading a file we did not train.
_SPECIAL_ALIASES = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "bos": ("<bos>", "<s>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]", "<|endoftext|>"),
    "eos": ("<eos>", "</s>", "<|end_of_text|>", "<|endoftext|>", "[SEP]"),
}
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
