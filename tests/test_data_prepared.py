"""Data at scale (`lm/data/prepared.py`, `stream.py`, `sources.py`): `lm prepare`, lazy prepared reading, the
streaming packer, mixtures, per-process reads, the formats, and the one-line errors for bad input."""

import gzip
import json
import random

import numpy as np
import pytest

from lm.data import corpus, prepared, sources, stream
from lm.data.packing import pack_rows
from lm.data.pipeline import TokenBatches, TokenData
from lm.errors import DataError

WORDS = ["river", "stone", "light", "quiet", "seven", "paper", "north", "glass", "among", "under", "the", "a"]


def _text(rng, lo=20, hi=80) -> str:
  return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("raw")
  rng = random.Random(0)
  for i in range(300):
    (d / f"doc{i:03d}.txt").write_text(_text(rng) + "\n")
  return d


@pytest.fixture(scope="module")
def prepared_dir(corpus_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("prep") / "p"
  prepared.prepare(str(corpus_dir), str(out), tokenizer="bpe", vocab_size=300, workers=2, val_fraction=0.1,
                   test_fraction=0.05, shard_bytes=4096, progress=False)
  return out


def _build(source, **kw):
  return TokenData.build(str(source), "bpe", 300, seq_len=32, val_fraction=0.1, test_fraction=0.05, **kw)


def test_prepared_training_rows_equal_in_memory(corpus_dir, prepared_dir):
  """The same corpus in memory and prepared: same tokenizer, same train rows for 20 batches, same eval
  batches; the manifest's counts are the corpus's."""
  mem, prep = _build(corpus_dir), _build(prepared_dir)
  assert mem.tokenizer.files() == prep.tokenizer.files()
  a, b = mem.train_iterator(8, seed=3), prep.train_iterator(8, seed=3)
  for _ in range(20):
    x, y = next(a), next(b)
    assert all(np.array_equal(x[k], y[k]) for k in x)
  for (x, nx), (y, ny) in zip(mem.eval_batches("val", 8), prep.eval_batches("val", 8), strict=True):
    assert nx == ny and all(np.array_equal(x[k], y[k]) for k in x)
  m = prepared.read_manifest(str(prepared_dir))
  assert len(m["splits"]["train"]["shards"]) > 1  # small shards: the data source reads across files
  for split in ("train", "val", "test"):
    texts = mem.splits[split]
    assert m["splits"][split]["documents"] == len(texts)
    assert m["splits"][split]["bytes"] == sum(map(len, texts))
  assert m["splits"]["train"]["tokens"] == sum(len(mem.tokenizer.encode(t)) for t in mem.splits["train"])


def test_packed_stream_is_concat_then_split_of_each_epochs_shuffled_documents():
  """RowPlan against the slow reference: every epoch's documents in the permutation's order, back to back."""
  rng = np.random.RandomState(0)
  docs = [rng.randint(0, 50, size=rng.randint(0, 30)).astype(np.int32) for _ in range(100)]
  store = type("S", (), {})()
  store.lengths = np.array([len(d) for d in docs], np.int64)
  store.get = lambda ids: [docs[i] for i in ids]
  builder = TokenBatches([type("P", (), dict(store=store, weight=1.0))()], 4, 0, 4, 7, 16, 98, 99)
  plan = stream.RowPlan(store, 16, stream.part_seed(7, 0), extra=1)
  epochs = -(-stream.ROW_WINDOW * 16 // plan.total) + 1  # enough stream for one whole window of rows
  order = [d for e in range(epochs) for d in plan.perm(e)(np.arange(100))]
  assert sorted(order[:100]) == list(range(100)) and order[:100] != order[100:200]
  want = pack_rows([docs[d] for d in order], 16, 98, 99, 0)
  rows = plan.shuffled_rows(np.arange(stream.ROW_WINDOW))
  assert sorted(rows.tolist()) == list(range(stream.ROW_WINDOW))  # a window's rows, each drawn once
  got = {k: np.concatenate([builder(i)[k] for i in range(50)]) for k in want}
  for k in ("inputs", "targets", "positions", "loss_mask", "segment_ids"):
    assert np.array_equal(got[k], want[k][rows[:200]]), k


def test_two_processes_read_only_their_own_records_and_make_the_global_batch(prepared_dir):
  whole = _build(prepared_dir)._batches(8, 0, 0, 1)
  halves = [_build(prepared_dir)._batches(8, 0, p, 2) for p in (0, 1)]  # each process opens its own data
  for i in range(5):
    want = whole(i)
    got = [h(i) for h in halves]
    assert all(np.array_equal(np.concatenate([g[k] for g in got]), want[k]) for k in want)
  for p, h in enumerate(halves):
    plan = h.plans[0]
    draws = [plan.shuffled_rows(np.arange(i * 8 + p * 4, i * 8 + p * 4 + 4)) for i in range(5)]
    expected = sum(len(np.unique(np.concatenate([plan.pieces(r, 1)[1] for r in rows]))) for rows in draws)
    assert h.stores[0].records.opened == expected  # exactly the documents of its own rows
  n_docs = prepared.read_manifest(str(prepared_dir))["splits"]["train"]["documents"]
  assert halves[0].stores[0].records.opened < n_docs


def test_iterator_state_resumes_the_exact_batch_order(prepared_dir):
  data = _build(prepared_dir)
  it = data.train_iterator(8, seed=1)
  for _ in range(7):
    next(it)
  state = it.get_state()
  after = [next(it) for _ in range(5)]
  again = data.train_iterator(8, seed=1)
  again.set_state(json.loads(json.dumps(state)))
  for want in after:
    got = next(again)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_mixture_hits_its_weights_and_resumes(tmp_path):
  rng = random.Random(1)
  for name, letter in (("a", "a"), ("b", "b")):
    d = tmp_path / name
    d.mkdir()
    for i in range(60):
      (d / f"{i}.txt").write_text(letter * rng.randint(20, 60) + "\n")
  source = f"0.75*{tmp_path / 'a'},0.25*{tmp_path / 'b'}"
  data = TokenData.build(source, "bytes", seq_len=16, val_fraction=0.1, test_fraction=0.0)
  assert data.part_names == ["a", "b"]
  it = data.train_iterator(16, seed=0)
  rows_a = rows = 0
  for _ in range(50):
    batch = next(it)
    from_a = (batch["inputs"] == ord("a")).any(1)
    assert not (from_a & (batch["inputs"] == ord("b")).any(1)).any()  # a row never mixes sources
    rows_a += int(from_a.sum())
    rows += len(from_a)
  assert abs(rows_a / rows - 0.75) <= 1 / rows + 1e-9  # deterministic quotas: within one row of the weight
  state = it.get_state()
  want = next(it)
  again = data.train_iterator(16, seed=0)
  again.set_state(state)
  assert np.array_equal(next(again)["inputs"], want["inputs"])
  per_part = [data.eval_batches("val", 4, part=p) for p in (0, 1)]
  assert all(per_part) and len(data.eval_batches("val", 4)) == sum(map(len, per_part))
  with pytest.raises(DataError, match="must be positive"):
    TokenData.build(f"0*{tmp_path / 'a'},1*{tmp_path / 'b'}", "bytes", seq_len=16)
  with pytest.raises(DataError, match="weight on every source"):
    TokenData.build(f"0.5*{tmp_path / 'a'},{tmp_path / 'b'}", "bytes", seq_len=16)


def test_rerunning_prepare_is_a_no_op_and_an_interrupted_one_starts_over(corpus_dir, prepared_dir, tmp_path, capsys):
  before = (prepared_dir / "manifest.json").read_bytes()
  prepared.prepare(str(corpus_dir), str(prepared_dir), tokenizer="bpe", vocab_size=300, workers=2,
                   val_fraction=0.1, test_fraction=0.05, shard_bytes=4096)
  assert "nothing to do" in capsys.readouterr().err
  assert (prepared_dir / "manifest.json").read_bytes() == before
  with pytest.raises(DataError, match="holds another prepared corpus"):
    prepared.prepare(str(corpus_dir), str(prepared_dir), tokenizer="bytes", progress=False)
  out = tmp_path / "p"
  (out / ".partial").mkdir(parents=True)
  (out / ".partial" / "train-00000.arrayrecord").write_bytes(b"half")
  prepared.prepare(str(corpus_dir), str(out), tokenizer="bytes", workers=0, val_fraction=0.1, test_fraction=0.05)
  assert "interrupted; starting over" in capsys.readouterr().err
  assert not (out / ".partial").exists() and prepared.read_manifest(str(out))["splits"]["train"]["documents"] > 0


def test_a_failed_prepare_leaves_no_manifest(tmp_path):
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "one.txt").write_text("no blank lines and too short to cut\n")
  with pytest.raises(DataError, match=r"empty val split .*single file is split at blank lines"):
    prepared.prepare(str(tmp_path / "src" / "one.txt"), str(tmp_path / "out"), tokenizer="bytes", progress=False)
  assert not (tmp_path / "out" / "manifest.json").exists() and not (tmp_path / "out" / ".partial").exists()


def test_bad_prepared_directories_are_one_line(prepared_dir, tmp_path):
  bad = tmp_path / "v"
  bad.mkdir()
  m = json.loads((prepared_dir / "manifest.json").read_text())
  (bad / "manifest.json").write_text(json.dumps(dict(m, format_version=99)))
  with pytest.raises(DataError, match=r"format version 99, this lm reads version 1; run lm prepare again"):
    _build(bad)
  with pytest.raises(DataError, match="fewer than one batch of 100000"):
    _build(prepared_dir).train_iterator(100000, seed=0)
  half = tmp_path / "half"
  half.mkdir()
  for name in ("train-00000.arrayrecord", "train.lengths"):
    (half / name).write_bytes((prepared_dir / name).read_bytes())
  with pytest.raises(DataError, match=r"holds lm prepare output but no manifest.json .*run lm prepare again"):
    _build(half)


def test_lm_prepare_command_and_workers_give_the_same_batches(corpus_dir, prepared_dir, tmp_path, capsys):
  from lm import cli
  out = tmp_path / "cli"
  assert cli.main(["prepare", str(corpus_dir), "--out", str(out), "--tokenizer", "bpe", "--vocab-size", "300",
                   "--workers", "0", "--val-fraction", "0.1", "--test-fraction", "0.05"]) == 0
  assert f"train with --config.data.source={out}" in capsys.readouterr().out
  same = ("splits", "tokenizer", "dtype", "fingerprint", "settings")
  a, b = (prepared.read_manifest(str(d)) for d in (out, prepared_dir))
  assert {k: a[k] for k in same if k != "splits"} == {k: b[k] for k in same if k != "splits"}
  assert all(a["splits"][s][k] == b["splits"][s][k] for s in a["splits"] for k in ("documents", "tokens", "bytes"))
  data = _build(prepared_dir)
  threads, procs = data.train_iterator(8, seed=2), data.train_iterator(8, seed=2, workers=2)
  for _ in range(6):
    x, y = next(threads), next(procs)
    assert all(np.array_equal(x[k], y[k]) for k in x)
  assert cli.main(["prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
  assert "does not exist" in capsys.readouterr().err


def test_a_single_text_file_is_split_into_documents_at_blank_lines(tmp_path):
  """The new-user trap: one plain-text file used to be one document, so val was empty and bpb read 0."""
  rng = random.Random(2)
  path = tmp_path / "play.txt"
  path.write_text("\n\n".join(_text(rng) for _ in range(200)))
  data = TokenData.build(str(path), "bytes", seq_len=64)
  assert len(data.splits["val"]) > 0 and data.eval_batches("val", 4)
  assert sum(len(v) for v in data.splits.values()) == 200
  no_blank = tmp_path / "long.txt"
  no_blank.write_text("\n".join(_text(rng) for _ in range(4000)))
  pieces = sources.split_text(no_blank.read_bytes())
  assert len(pieces) > 1 and b"".join(pieces) == no_blank.read_bytes()
  assert all(len(p) <= sources.PIECE_BYTES for p in pieces)
  (tmp_path / "one.txt").write_text("a single short paragraph\n")
  with pytest.raises(DataError, match=r"the val split is empty \(1 document; a single file is split at blank"):
    TokenData.build(str(tmp_path / "one.txt"), "bytes", seq_len=64)


def test_compressed_jsonl_parquet_and_datasets_directories(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  import zstandard
  texts = [f"document number {i}" for i in range(5)]
  lines = "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)).encode()
  (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(lines))
  (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
  want = [t.encode() for t in texts]
  assert corpus.load_documents(f"jsonl:{tmp_path / 'a.jsonl.gz'}:text") == want
  assert corpus.load_documents(f"jsonl:{tmp_path / 'b.jsonl.zst'}:text") == want
  pq.write_table(pa.table({"text": texts, "n": list(range(5))}), tmp_path / "c.parquet", row_group_size=2)
  assert corpus.load_documents(f"parquet:{tmp_path / 'c.parquet'}:text") == want
  with pytest.raises(DataError, match=r"has no column 'body' \(columns: text, n\)"):
    corpus.load_documents(f"parquet:{tmp_path / 'c.parquet'}:body")
  # A directory as datasets.Dataset.save_to_disk writes it: Arrow stream files listed in state.json.
  ds = tmp_path / "saved"
  ds.mkdir()
  table = pa.table({"text": texts})
  with pa.OSFile(str(ds / "data-00000-of-00001.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
    w.write_table(table)
  (ds / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
  (ds / "dataset_info.json").write_text("{}")
  assert corpus.load_documents(str(ds)) == want
  (tmp_path / "t").mkdir()
  (tmp_path / "t" / "x.txt.gz").write_bytes(gzip.compress(b"compressed text"))
  (tmp_path / "t" / "y.txt").write_bytes(b"plain text")
  assert corpus.load_documents(str(tmp_path / "t")) == [b"compressed text", b"plain text"]


@pytest.mark.parametrize("name,payload,what", [
    ("image.png", b"\x89PNG\r\n\x1a\n" + bytes(100), "a PNG image"),
    ("data.parquet", b"PAR1" + bytes(100), r"a Parquet file, not text; read it as 'parquet:PATH:COLUMN'"),
    ("tool", b"\x7fELF\x02\x01" + bytes(100), "an executable"),
    ("archive.jsonl", b"\x1f\x8b\x08" + bytes(50), "gzip-compressed, not text; name it"),
])
def test_binary_or_undecoded_files_are_refused_by_name(tmp_path, name, payload, what):
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "ok.txt").write_text("fine text")
  (tmp_path / "src" / name).write_bytes(payload)
  with pytest.raises(DataError, match=what) as e:
    corpus.load_documents(str(tmp_path / "src"))
  assert name in str(e.value) and "\n" not in str(e.value)


def test_large_raw_sources_are_sent_to_lm_prepare(corpus_dir):
  from lm import config as config_lib
  from lm.train import run as run_lib
  config = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(config, [f"data.source={corpus_dir}", "data.max_raw_bytes=1000"])
  with pytest.raises(DataError, match=r"more than data.max_raw_bytes=1000 .* run `lm prepare .* --out DIR` once"):
    run_lib.check(config)


def test_completion_only_loss_refuses_a_prepared_source_before_anything_is_written(prepared_dir, tmp_path):
  from lm import families  # pylint: disable=import-outside-toplevel
  from lm.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from lm.train import loop  # pylint: disable=import-outside-toplevel
  config = families.load_config("token_ntp:tiny", [f"data.source={prepared_dir}", "data.completion_after=="])
  with pytest.raises(ConfigError, match=r"completion_after='=' needs raw text in memory, but data.source .* is a "
                                        r"prepared directory"):
    loop.train(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
  # TokenData built by hand on a prepared part: the same one line.
  data = TokenData.build(str(prepared_dir))
  with pytest.raises(DataError, match="needs raw text in memory"):
    TokenData(data.splits, data.tokenizer, 16, parts=data.parts, completion_after="=")
