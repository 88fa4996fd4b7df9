"""Tests for lm/data/corpus.py: sources, errors, the default corpus and the document split."""

import json
import time

import pytest

from lm.data import corpus
from lm.errors import DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path / "cache"))


def _raises_one_line(fn, *args, match=None):
  with pytest.raises(DataError, match=match) as e:
    fn(*args)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_files_directories_globs_and_commas(tmp_path):
  (tmp_path / "d" / "sub").mkdir(parents=True)
  (tmp_path / "d" / "b.txt").write_bytes(b"bee")
  (tmp_path / "d" / "a.txt").write_bytes(b"ay\xff")  # Non-UTF-8 stays as is.
  (tmp_path / "d" / "sub" / "c.md").write_bytes(b"sea")
  (tmp_path / "d" / ".hidden").write_bytes(b"skip me")
  (tmp_path / "d" / "empty.txt").write_bytes(b"")
  d = tmp_path / "d"
  assert corpus.load_documents(str(d / "a.txt")) == [b"ay\xff"]
  assert corpus.load_documents(str(d)) == [b"ay\xff", b"bee", b"sea"]
  assert corpus.load_documents(str(d / "*.txt")) == [b"ay\xff", b"bee"]
  assert corpus.load_documents(str(d / "**" / "*.md")) == [b"sea"]
  assert corpus.load_documents(f"{d / 'b.txt'}, {d / 'a.txt'}") == [b"bee", b"ay\xff"]


def test_jsonl(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_text('{"text": "one", "id": 1}\n\n{"text": "tw\\u00f6", "id": 2}\n')
  assert corpus.load_documents(f"jsonl:{path}:text") == [b"one", "twö".encode()]
  assert corpus.load_documents(f"jsonl:{tmp_path}/*.jsonl:text") == [b"one", "twö".encode()]
  message = _raises_one_line(corpus.load_documents, f"jsonl:{path}:body")
  assert "line 1 of" in message and "text, id" in message and "'body'" in message


def test_errors_are_one_line(tmp_path):
  assert "does not exist" in _raises_one_line(corpus.load_documents, str(tmp_path / "missing.txt"))
  assert "matches nothing" in _raises_one_line(corpus.load_documents, str(tmp_path / "*.nothing"))
  (tmp_path / "empty.txt").write_bytes(b"")
  message = _raises_one_line(corpus.load_documents, str(tmp_path / "empty.txt"))
  assert "empty" in message and "1 document, 0 bytes" in message
  (tmp_path / "bad.jsonl").write_text("{not json\n")
  assert "line 1 of" in _raises_one_line(corpus.load_documents, f"jsonl:{tmp_path / 'bad.jsonl'}:text")


def test_python_prose_default_corpus_and_cache():
  start = time.perf_counter()
  docs = corpus.load_documents("python-prose")
  first = time.perf_counter() - start
  start = time.perf_counter()
  again = corpus.load_documents()
  cached = time.perf_counter() - start
  assert again == docs
  assert cached < max(1.0, first / 5)
  assert len(set(docs)) == len(docs) > 1000
  text = b"".join(docs)
  assert 1e6 < len(text) < 4e6
  assert sum(b < 128 for b in text[:200_000]) > 0.99 * 200_000
  assert b"Return" in text and b"the" in text
  assert list(corpus.cache_dir().glob("corpora/python-prose-*.npz"))


def test_python_code_corpus():
  docs = corpus.load_documents("python-code")
  assert 5e6 < sum(map(len, docs)) < 30e6
  assert any(b"def " in d for d in docs[:50])


def _docs(n):
  return [f"document number {i} says hello.".encode() for i in range(n)]


def test_split_is_disjoint_deterministic_and_complete():
  docs = _docs(1000)
  splits = corpus.split_documents(docs, 0.1, 0.05, seed=0)
  assert splits == corpus.split_documents(docs, 0.1, 0.05, seed=0)
  assert sorted(sum(splits.values(), [])) == sorted(docs)
  assert 50 < len(splits["val"]) < 150 and 20 < len(splits["test"]) < 80
  assert splits != corpus.split_documents(docs, 0.1, 0.05, seed=1)
  # The split of a document depends on its content only, not on what else is in the corpus.
  sub = corpus.split_documents(docs[:500], 0.1, 0.05, seed=0)
  for name in sub:
    assert set(sub[name]) <= set(splits[name])


def test_split_keeps_duplicates_together_and_holds_out_something():
  docs = [b"a", b"b", b"c", b"a"]
  splits = corpus.split_documents(docs, 0.02, 0.02)
  assert splits["val"] and splits["test"] and splits["train"]
  homes = [name for name, part in splits.items() if b"a" in part]
  assert len(homes) == 1
  assert sorted(sum(splits.values(), [])) == sorted(docs)


def test_split_errors():
  assert "train split is empty" in _raises_one_line(corpus.split_documents, [b"x"], 0.99, 0.0)
  _raises_one_line(corpus.split_documents, _docs(10), 0.6, 0.6)


def test_jsonl_field_must_be_text(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_text(json.dumps({"text": 3}) + "\n")
  assert "not a string" in _raises_one_line(corpus.load_documents, f"jsonl:{path}:text")


def test_missing_and_empty_sources_name_the_source_and_its_size(tmp_path):
  good = tmp_path / "good.txt"
  good.write_bytes(b"text")
  missing = str(tmp_path / "missing.txt")
  message = _raises_one_line(corpus.load_documents, f"{good},{missing}")
  assert "does not exist" in message and repr(missing) in message
  (tmp_path / "none").mkdir()
  (tmp_path / "hidden").mkdir()
  (tmp_path / "hidden" / ".secret").write_bytes(b"skipped")
  for name in ("none", "hidden"):
    message = _raises_one_line(corpus.load_documents, str(tmp_path / name))
    assert "no regular files" in message and repr(str(tmp_path / name)) in message
  # A directory of empty files, an empty file and a jsonl with only blank lines or empty texts are empty corpora.
  (tmp_path / "empties").mkdir()
  for i in range(3):
    (tmp_path / "empties" / f"{i}.txt").write_bytes(b"")
  (tmp_path / "empty.txt").write_bytes(b"")
  (tmp_path / "blank.jsonl").write_text("\n  \n")
  (tmp_path / "hollow.jsonl").write_text('{"text": ""}\n{"text": ""}\n')
  for source, size in [
      (str(tmp_path / "empties"), "3 documents, 0 bytes"),
      (str(tmp_path / "empty.txt"), "1 document, 0 bytes"),
      (f"jsonl:{tmp_path / 'blank.jsonl'}:text", "0 documents, 0 bytes"),
      (f"jsonl:{tmp_path / 'hollow.jsonl'}:text", "2 documents, 0 bytes"),
  ]:
    message = _raises_one_line(corpus.load_documents, source)
    assert "corpus is empty" in message and repr(source) in message and size in message, message


def test_whitespace_only_and_invalid_utf8_documents_are_kept_verbatim(tmp_path):
  # Whitespace is text to predict (bits per byte counts it), so only a zero-byte document is dropped.
  (tmp_path / "a.txt").write_bytes(b" \n\t\r\n")
  (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x80 \xe2\x82\x00")
  (tmp_path / "c.txt").write_bytes(b"")
  assert corpus.load_documents(str(tmp_path)) == [b" \n\t\r\n", b"\xff\xfe\x80 \xe2\x82\x00"]


def test_empty_train_split_names_the_source_and_its_size():
  message = _raises_one_line(corpus.split_documents, [b"xyz"], 0.5, 0.49, 0, "tiny.txt")
  assert "train split is empty" in message and "'tiny.txt'" in message and "1 document, 3 bytes" in message
