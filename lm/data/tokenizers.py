"""Tokenizers by name: `build_tokenizer(spec)` ('bytes', 'bpe' trained and cached, a tokenizer.json or
SentencePiece .model path, a saved or a Hugging Face model directory) and `tokenizer_from_files` (a saved one).
The kinds themselves: `tokenizer_base.py` (the interface, bytes, BPE), `spm.py`, `hf_tokenizer.py`.
"""

import hashlib
import json
import os

from etils import epath
import tokenizers as hf
from tokenizers import decoders, models, pre_tokenizers, trainers

from lm.data.corpus import atomic_write, cache_dir
from lm.data.hf_tokenizer import HFTokenizer
from lm.data.spm import SentencePieceTokenizer
from lm.data.tokenizer_base import (HF_CONFIG, META_FILE, SPECIAL_TOKENS, BPETokenizer,  # noqa: F401  (re-exported)
                                    ByteTokenizer, Tokenizer, _first_line)
from lm.errors import DataError, type_name

_SPEC_HELP = ("use 'bytes', 'bpe', a tokenizer.json path, a SentencePiece .model path or a Hugging Face model "
              "directory (tokenizer.json + tokenizer_config.json)")


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
      tok = HFTokenizer(hf.Tokenizer.from_str(files["tokenizer.json"].decode("utf-8")),
                        json.loads(files[HF_CONFIG]), where)
    elif kind == "sentencepiece":
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
    return SentencePieceTokenizer.from_file(path)
  if os.path.isfile(os.path.join(path, META_FILE)):
    return load_tokenizer(path)
  if is_hf_dir(path):
    return HFTokenizer.from_dir(path)
  raise DataError(f"tokenizer {spec!r} is not a known tokenizer; {_SPEC_HELP}")
