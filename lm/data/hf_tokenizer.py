"""Tokenizers of Hugging Face model directories: `tokenizer.json` with its `tokenizer_config.json`."""

import json

from etils import epath
import numpy as np
import tokenizers as hf

from lm.data.tokenizer_base import _SPECIAL_ALIASES, BPETokenizer, HF_CONFIG, _first_line
from lm.errors import DataError


def _token_text(value) -> str | None:
  """tokenizer_config.json names a special token as a string or as {"content": ...}."""
  return value.get("content") if isinstance(value, dict) else value


class HFTokenizer(BPETokenizer):
  """A Hugging Face model directory's tokenizer (`tokenizer.json` + `tokenizer_config.json`), with exactly its ids.

  bos/eos/pad are the ones `tokenizer_config.json` names; no id is added: without a bos token (GPT-2, Qwen) a
  document starts after the eos token, as those models were trained, and without a pad token padding uses
  the eos id (padded positions are masked out of every loss). Prompts are encoded as the tokenizer's own
  post-processor encodes them (Llama's adds its bos, Qwen's nothing); documents get one start id from the
  pipeline and the text's ids without special tokens, so a bos is never added twice.
  """

  kind = "hf"

  def __init__(self, tokenizer: hf.Tokenizer, config: dict, where: str = "tokenizer"):
    self.hf_config = config
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1 if vocab else 0
    roles = {}
    for role in ("bos", "eos", "pad"):
      text = _token_text(config.get(f"{role}_token"))
      if text is not None and text not in vocab:
        raise DataError(f"{where}: {HF_CONFIG} names {role}_token {text!r}, which is not in tokenizer.json's "
                        "vocabulary; fix the file")
      roles[role] = vocab.get(text) if text is not None else None
    if roles["eos"] is None:
      roles["eos"] = next((vocab[a] for a in _SPECIAL_ALIASES["eos"] if a in vocab), None)
    if roles["eos"] is None:
      raise DataError(f"{where}: no eos_token in {HF_CONFIG} and none of {_SPECIAL_ALIASES['eos']} in the "
                      "vocabulary; name the end-of-text token as eos_token")
    bos = roles["eos"] if roles["bos"] is None else roles["bos"]
    pad = roles["eos"] if roles["pad"] is None else roles["pad"]
    super().__init__(tokenizer)
    # BPETokenizer picked ids by name and may have grown the vocabulary: take exactly the HF roles and size.
    self.vocab_size, self.pad_id, self.bos_id, self.eos_id = size, pad, bos, roles["eos"]
    table = self._id_bytes[:size] + [b""] * max(size - len(self._id_bytes), 0)
    for i in (pad, bos, roles["eos"]):
      table[i] = b""
    self._id_bytes = table

  @classmethod
  def from_dir(cls, directory) -> "HFTokenizer":
    directory = epath.Path(directory)
    where = f"tokenizer directory {str(directory)!r}"
    try:
      config = json.loads((directory / HF_CONFIG).read_text()) if (directory / HF_CONFIG).exists() else {}
      return cls(hf.Tokenizer.from_str((directory / "tokenizer.json").read_text()), config, where)
    except DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # `tokenizers` raises bare Exceptions.
      raise DataError(f"{where}: cannot load tokenizer.json ({_first_line(e)}); pass a Hugging Face model "
                      "directory with a valid tokenizer.json") from None

  def prompt_ids(self, text: str) -> np.ndarray:
    # A prompt is read as transformers reads it: special tokens written in it (a chat template's
    # <|im_start|>) are those tokens. Documents (`encode`) keep them as text.
    self._tok.encode_special_tokens = False
    try:
      plain = self._tok.encode(text, add_special_tokens=False).ids
      full = self._tok.encode(text, add_special_tokens=True).ids
    finally:
      self._tok.encode_special_tokens = True
    lead = next((i for i in range(len(full) + 1) if full[i:i + len(plain)] == plain), 0)
    ids = full[:lead] + plain  # the post-processor's leading specials (a bos or nothing), never trailing ones
    return np.asarray(ids or [self.bos_id], dtype=np.int32)

  def _files(self) -> dict[str, bytes]:
    return {"tokenizer.json": self._tok.to_str().encode("utf-8"),
            HF_CONFIG: json.dumps(self.hf_config, indent=2).encode("utf-8")}
