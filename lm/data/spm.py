"""SentencePiece `.model` tokenizers (Llama-2 style), behind the same `Tokenizer` interface."""

import numpy as np
import sentencepiece as spm
from etils import epath

from lm.data.tokenizer_base import Tokenizer, _drop_specials, _first_line, _piece_bytes
from lm.errors import DataError


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece `.model`; pad/bos/eos from the model, else new ids appended after its vocabulary."""

  kind = "sentencepiece"

  def __init__(self, model_proto: bytes):
    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    n = self._sp.get_piece_size()
    found = {"pad": self._sp.pad_id(), "bos": self._sp.bos_id(), "eos": self._sp.eos_id()}  # -1 when absent
    ids, size = {}, n
    for role in ("pad", "bos", "eos"):
      if 0 <= found[role] < n:
        ids[role] = found[role]
      else:
        ids[role], size = size, size + 1
    super().__init__(size, ids["pad"], ids["bos"], ids["eos"])
    table = []
    for i in range(n):
      if self._sp.is_control(i):
        table.append(b"")
      elif self._sp.is_byte(i):
        table.append(_piece_bytes(self._sp.id_to_piece(i)))
      elif self._sp.is_unknown(i):
        table.append(b"?")  # Stands for at least one byte of text we cannot name.
      else:
        table.append(_piece_bytes(self._sp.id_to_piece(i)))
    self._id_bytes = table + [b""] * (size - n)

  @classmethod
  def from_file(cls, path) -> "SentencePieceTokenizer":
    try:
      proto = epath.Path(path).read_bytes()
      return cls(proto)
    except (OSError, RuntimeError) as e:
      raise DataError(
          f"tokenizer {str(path)!r}: cannot load SentencePiece model ({_first_line(e)}); pass a valid .model file"
      ) from None

  def encode(self, data: bytes) -> np.ndarray:
    return np.asarray(self._sp.encode(data.decode("utf-8", errors="replace"), out_type=int), dtype=np.int32)

  def encode_batch(self, datas: list[bytes]) -> list[np.ndarray]:
    out = self._sp.encode([d.decode("utf-8", errors="replace") for d in datas], out_type=int)
    return [np.asarray(ids, dtype=np.int32) for ids in out]

  def decode_bytes(self, ids) -> bytes:
    keep = _drop_specials(ids, self._sp.get_piece_size(), self)
    return self._sp.decode(keep).encode("utf-8")

  def _files(self) -> dict[str, bytes]:
    return {"tokenizer.model": self._proto}


# ---------------------------------------------------------------------------------------------------------
# Construction.
