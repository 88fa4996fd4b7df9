"""Tests for lm/data/tokenizers.py: byte, BPE and SentencePiece tokenizers, caching, save/load, errors."""

import io

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest
import sentencepiece as spm
import tokenizers as hf
from tokenizers import decoders, models, pre_tokenizers, trainers

from lm.data import tokenizers
from lm.errors import DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path / "cache"))


def _corpus(n=200):
  words = "the quick brown fox jumps over a lazy dog while naïve zebras read über docs 東京".split()
  rng = np.random.default_rng(0)
  return [" ".join(rng.choice(words, size=12)).encode() + b".\n" for _ in range(n)]


def _raises_one_line(fn, *args, match=None):
  with pytest.raises(DataError, match=match) as e:
    fn(*args)
  assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------------


def test_byte_tokenizer_every_byte_round_trips():
  tok = tokenizers.ByteTokenizer()
  data = bytes(range(256))
  ids = tok.encode(data)
  assert ids.dtype == np.int32 and ids.tolist() == list(range(256))
  assert tok.decode_bytes(ids) == data
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 256, 257, 258)


@hypothesis.given(st.binary(max_size=200))
@hypothesis.settings(max_examples=200, deadline=None, database=None)
def test_byte_tokenizer_round_trips_random_bytes(data):
  tok = tokenizers.ByteTokenizer()
  ids = tok.encode(data)
  assert tok.decode_bytes(ids) == data
  assert tok.unit_bytes()[ids].sum() == len(data)


def test_byte_tokenizer_drops_specials_and_replaces_invalid_utf8():
  tok = tokenizers.ByteTokenizer()
  ids = np.concatenate([[tok.bos_id], tok.encode(b"ok\xff"), [tok.eos_id, tok.pad_id]])
  assert tok.decode_bytes(ids) == b"ok\xff"
  assert tok.decode(ids) == "ok\ufffd"
  units = tok.unit_bytes()
  assert units.shape == (259,) and units[tok.eos_id] == 1 and units[tok.pad_id] == units[tok.bos_id] == 0


# ---------------------------------------------------------------------------------------------------------


def test_bpe_trains_and_round_trips_utf8():
  tok = tokenizers.build_tokenizer("bpe", _corpus(), 400)
  assert tok.kind == "bpe" and 300 < tok.vocab_size <= 400
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  for text in ["the quick brown fox", "naïve über 東京 🙂 new words!", "  spaces\tand\nnewlines  ", ""]:
    ids = tok.encode(text.encode())
    assert ids.dtype == np.int32
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode()
    assert tok.unit_bytes()[ids].sum() == len(text.encode())
  # BPE compresses the text it was trained on.
  assert len(tok.encode(b"the quick brown fox")) < len(b"the quick brown fox") / 2


def test_bpe_handles_invalid_utf8_and_special_token_text():
  tok = tokenizers.build_tokenizer("bpe", _corpus(), 300)
  assert tok.decode(tok.encode(b"ok\xff\xfe end")) == "ok\ufffd\ufffd end"
  assert tok.decode(np.array([tok.bos_id, *tok.encode(b"hi"), tok.eos_id, tok.pad_id])) == "hi"
  # Text that spells a special token is still text.
  ids = tok.encode(b"a <eos> b")
  assert tok.eos_id not in ids.tolist() and tok.decode(ids) == "a <eos> b"
  batch = tok.encode_batch([b"the fox", b"\xff", b""])
  assert [b.tolist() for b in batch] == [tok.encode(b"the fox").tolist(), tok.encode(b"\xff").tolist(), []]


def test_bpe_training_is_cached(monkeypatch):
  docs = _corpus()
  first = tokenizers.build_tokenizer("bpe", docs, 300)
  assert len(list(tokenizers.cache_dir().glob("tokenizers/*.json"))) == 1

  def no_training(*args, **kwargs):
    raise AssertionError("retrained instead of using the cache")

  monkeypatch.setattr(tokenizers.trainers, "BpeTrainer", no_training)
  second = tokenizers.build_tokenizer("bpe", docs, 300)
  text = b"the lazy dog reads docs"
  assert second.encode(text).tolist() == first.encode(text).tolist()


def test_bpe_save_load_and_tokenizer_json(tmp_path):
  tok = tokenizers.build_tokenizer("bpe", _corpus(), 300)
  tok.save(tmp_path / "tok")
  from_json = tokenizers.build_tokenizer(str(tmp_path / "tok" / "tokenizer.json"), [], 0)
  for loaded in (tokenizers.load_tokenizer(tmp_path / "tok"), from_json):
    assert type(loaded) is tokenizers.BPETokenizer
    assert repr(loaded) == repr(tok)  # Same vocab_size and special ids.
    assert loaded.encode(b"the brown zebras").tolist() == tok.encode(b"the brown zebras").tolist()
    np.testing.assert_array_equal(loaded.unit_bytes(), tok.unit_bytes())


def test_foreign_tokenizer_json_gets_specials(tmp_path):
  # A GPT-2 style file with only <|endoftext|>: it serves as bos and eos, pad is appended after the vocab.
  raw = hf.Tokenizer(models.BPE())
  raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  raw.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  raw.train_from_iterator([d.decode() for d in _corpus()], trainer)
  raw.save(str(tmp_path / "gpt.json"))
  tok = tokenizers.build_tokenizer(str(tmp_path / "gpt.json"), [], 0)
  base = raw.get_vocab_size()
  eot = raw.token_to_id("<|endoftext|>")
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (eot, eot, base, base + 1)
  ids = tok.encode("über fox".encode())
  assert tok.decode(np.array([tok.bos_id, *ids, tok.pad_id])) == "über fox"
  assert tok.unit_bytes().shape == (base + 1,)


# ---------------------------------------------------------------------------------------------------------


def _sentencepiece_model(path, **kwargs):
  lines = [d.decode().strip() for d in _corpus(100)]
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, model_type="bpe", minloglevel=2,
                                 hard_vocab_limit=False, **kwargs)
  path.write_bytes(buf.getvalue())
  return str(path)


def test_sentencepiece_model(tmp_path):
  path = _sentencepiece_model(tmp_path / "sp.model", vocab_size=320, byte_fallback=True)
  tok = tokenizers.build_tokenizer(path, [], 0)
  assert tok.kind == "sentencepiece"
  # The default SentencePiece model has bos=1, eos=2 and no pad: pad is appended after the vocabulary.
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 320, 321)
  text = "the lazy fox reads über docs"
  ids = tok.encode(text.encode())
  assert tok.decode(np.array([tok.bos_id, *ids, tok.eos_id, tok.pad_id])) == text
  assert tok.unit_bytes()[tok.encode(b"the fox")].sum() == len(b" the fox")  # '▁the' carries its space.
  tok.save(tmp_path / "saved")
  loaded = tokenizers.load_tokenizer(tmp_path / "saved")
  assert loaded.encode(text.encode()).tolist() == ids.tolist() and loaded.vocab_size == 321


def test_sentencepiece_without_bos_eos(tmp_path):
  path = _sentencepiece_model(tmp_path / "sp.model", vocab_size=60, pad_id=3, bos_id=-1, eos_id=-1)
  tok = tokenizers.build_tokenizer(path, [], 0)
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (3, 60, 61, 62)


# ---------------------------------------------------------------------------------------------------------


def test_tokenizer_errors(tmp_path):
  _raises_one_line(tokenizers.build_tokenizer, "wordpiece", [], 0, match="'wordpiece'.*'bytes', 'bpe'")
  _raises_one_line(tokenizers.build_tokenizer, str(tmp_path / "nope.json"), [], 0, match="does not exist")
  _raises_one_line(tokenizers.build_tokenizer, str(tmp_path / "nope.model"), [], 0, match="does not exist")
  _raises_one_line(tokenizers.build_tokenizer, "bpe", _corpus(), 100, match="vocab_size=100")
  (tmp_path / "bad.json").write_text("{}")
  _raises_one_line(tokenizers.build_tokenizer, str(tmp_path / "bad.json"), [], 0, match="cannot load")
  _raises_one_line(tokenizers.load_tokenizer, tmp_path, match="tokenizer_meta.json")
