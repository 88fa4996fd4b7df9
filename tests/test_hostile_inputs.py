"""Hostile files and arguments (issue 34): paths read from files stay inside their directory, damaged prepared
data and compressed sources, binary files, meaningless settings and bad `lm sample` arguments are one line,
and dotted callables are checked by signature without being called. Every file is built here."""

import gzip
import json
import shutil
import sys

import numpy as np
import pytest

from lm import cli, config as config_lib
from lm.data import corpus, prepared
from lm.decoding import search
from lm.errors import CheckpointError, ConfigError, DataError, LMError
from lm.interop import safetensors
from lm.rl import rewards
from lm.train import trackers

TEXT = b"".join(b"Paragraph %d: the river ran past seven stones and a quiet glass house.\n\n" % i for i in range(400))


def _one_line(e) -> str:
  text = str(e.value)
  assert "\n" not in text, text
  return text


def _error(capsys, *argv) -> str:
  """The one line `lm ARGV` leaves on the terminal (a progress bar it wiped with \r is not left)."""
  assert cli.main(list(argv)) == 2
  err = capsys.readouterr().err
  lines = [line.rpartition("\r")[2].strip() for line in err.split("\n")]
  lines = [line for line in lines if line]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


# ---------------------------------------------------------------------------------------------------------
# Paths that leave their directory.


def test_a_safetensors_index_naming_files_outside_its_directory_is_refused(tmp_path):
  model, other = tmp_path / "model", tmp_path / "other"
  tensors = [(f"w{i}", (4,), np.float32, lambda i=i: np.full(4, i, np.float32)) for i in range(2)]
  assert len(safetensors.write(model, tensors, max_shard_bytes=16)) == 2  # two shards and an index
  safetensors.write(other, tensors)
  assert safetensors.Reader(model).get("w1").tolist() == [1.0] * 4
  index = json.loads((model / safetensors.INDEX).read_text())
  (model / "link.safetensors").symlink_to(other / "model.safetensors")
  for name in (str(other / "model.safetensors"), "../other/model.safetensors", "link.safetensors"):
    (model / safetensors.INDEX).write_text(json.dumps(dict(index, weight_map=dict(index["weight_map"], w1=name))))
    with pytest.raises(CheckpointError, match="leads outside") as e:
      safetensors.Reader(model)
    assert name in _one_line(e)


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
  raw = tmp_path_factory.mktemp("raw") / "book.txt"
  raw.write_bytes(TEXT)
  out = tmp_path_factory.mktemp("prep") / "p"
  prepared.prepare(str(raw), str(out), tokenizer="bytes", workers=0, val_fraction=0.1, test_fraction=0.05,
                   progress=False)
  return out


def _truncate(path, fraction):
  path.write_bytes(path.read_bytes()[:int(path.stat().st_size * fraction)])


def _drop_sizes(m):
  for split in m["splits"].values():
    split.pop("shard_sizes")


def _tokenizer_not_json(m, d):
  (d / "tokenizer" / "tokenizer_meta.json").write_text("{not json")


def _link_out(m, d):
  (d / "val-00000.arrayrecord").unlink()
  (d / "val-00000.arrayrecord").symlink_to(d.parent / "elsewhere.arrayrecord")


# (what is done to a copy of the prepared directory, given its manifest and directory; what the line says)
DAMAGE = {
    "tokenizer dir absolute": (lambda m, d: m["tokenizer"].update(dir=str(d.parent / "tok")), "leads outside"),
    "tokenizer dir ..": (lambda m, d: m["tokenizer"].update(dir="../tok"), "names '../tok', which leads outside"),
    "shard absolute": (lambda m, d: m["splits"]["val"]["shards"].__setitem__(0, "/etc/passwd"), "leads outside"),
    "shard linked out": (_link_out, "leads outside"),
    "missing key": (lambda m, d: m["splits"].pop("train"), "has no splits.train; run lm prepare again"),
    "inflated counts": (lambda m, d: m["splits"]["train"].update(documents=10**6), "counts 1000000 documents"),
    "truncated shard": (lambda m, d: _truncate(d / "train-00000.arrayrecord", 0.9), "recorded"),
    "truncated shard, no sizes": (lambda m, d: (_truncate(d / "train-00000.arrayrecord", 0.9), _drop_sizes(m)),
                                  r"train-00000.arrayrecord \(train split\) is damaged or truncated"),
    "truncated val shard": (lambda m, d: (_truncate(d / "val-00000.arrayrecord", 0.3), _drop_sizes(m)),
                            r"val-00000.arrayrecord \(val split\) is damaged or truncated"),
    "truncated lengths": (lambda m, d: _truncate(d / "train.lengths", 0.5), "train.lengths is"),
    "tokenizer meta not JSON": (_tokenizer_not_json, "tokenizer_meta.json is not JSON"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_or_escaping_prepared_directory_is_one_line(prepared_dir, tmp_path, damage):
  (tmp_path / "elsewhere.arrayrecord").write_bytes((prepared_dir / "val-00000.arrayrecord").read_bytes())
  d = tmp_path / "p"
  shutil.copytree(prepared_dir, d)
  m = json.loads((d / "manifest.json").read_text())
  change, message = DAMAGE[damage]
  change(m, d)
  (d / "manifest.json").write_text(json.dumps(m))
  with pytest.raises(DataError, match=message) as e:
    _, _, store, held_out = prepared.open_prepared(str(d))
    store.get(range(store.n))
    list(held_out["val"])
  assert "run lm prepare again" in _one_line(e)


def test_an_interrupted_prepare_says_so(tmp_path):
  (tmp_path / "p" / ".partial").mkdir(parents=True)
  (tmp_path / "p" / ".partial" / "train-00000.arrayrecord").write_bytes(b"half")
  with pytest.raises(DataError, match=r"was interrupted .*rerun lm prepare"):
    corpus.load_documents(str(tmp_path / "p"))


# ---------------------------------------------------------------------------------------------------------
# Sources.


def test_truncated_compressed_sources_are_one_line_in_train_and_prepare(tmp_path, capsys):
  import zstandard
  whole = gzip.compress(TEXT)
  (tmp_path / "book.txt.gz").write_bytes(whole[:len(whole) // 2])
  whole = zstandard.ZstdCompressor().compress(TEXT)
  (tmp_path / "book.txt.zst").write_bytes(whole[:len(whole) // 2])
  for name in ("book.txt.gz", "book.txt.zst"):
    with pytest.raises(DataError, match=f"{name} is truncated or not validly compressed") as e:
      corpus.load_documents(str(tmp_path / name))  # what lm train reads a raw source with
    _one_line(e)
  err = _error(capsys, "prepare", str(tmp_path / "book.txt.gz"), "--out", str(tmp_path / "out"), "--tokenizer",
               "bytes", "--workers", "0")
  assert "book.txt.gz is truncated" in err


def test_numpy_and_random_bytes_are_refused_as_binary(tmp_path):
  rng = np.random.default_rng(0)
  src = tmp_path / "src"
  src.mkdir()
  (src / "ok.txt").write_bytes("Ça été très élevé, où ça?\n".encode("latin-1") * 100)  # legacy text is text
  assert len(corpus.load_documents(str(src))) == 1
  np.save(src / "arr.npy", rng.random(1000))
  np.savez(src / "arrs.npz", a=rng.random(1000))
  (src / "noise.bin").write_bytes(rng.bytes(8192))
  for name, what in (("arr.npy", "a NumPy array"), ("arrs.npz", r"a NumPy archive \(.npz\)"),
                     ("noise.bin", "binary data")):
    with pytest.raises(DataError, match=f"{name} is {what}") as e:
      corpus.load_documents(str(src))
    _one_line(e)
    (src / name).unlink()


# ---------------------------------------------------------------------------------------------------------
# Settings and arguments.


@pytest.mark.parametrize("override, message", [
    ("train.keep_checkpoints=0", "keep_checkpoints=0 must be positive"),
    ("train.checkpoint_every=-1", "checkpoint_every=-1 must be >= 0"),
    ("optim.lr=-1.0", "optim.lr=-1.0 must be positive"),
    ("optim.warmup_steps=-5", "warmup_steps=-5 must be >= 0"),
    ("optim.clip_norm=-1.0", "clip_norm=-1.0 must be >= 0"),
    ("train.eval_every=-1", "eval_every=-1 must be >= 0"),
    ("data.val_fraction=1.0", "must be >= 0 and sum to < 1"),
    ("sample.top_p=0.0", r"top_p=0.0 must be in \(0, 1\]"),
])
def test_meaningless_settings_are_refused(override, message):
  c = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(c, [override])
  with pytest.raises(ConfigError, match=message) as e:
    config_lib.validate(c)
  _one_line(e)


def test_bad_sample_arguments_are_one_line_before_anything_loads(tmp_path, capsys):
  w = str(tmp_path / "no_such_run")  # checked before the workdir is read
  assert "--max-new 0" in _error(capsys, "sample", w, "--max-new", "0")
  assert "--max-new -3" in _error(capsys, "sample", w, "--max-new", "-3")
  bad_prompt = b"abc\xff\xfedef".decode("utf-8", "surrogateescape")  # as Python decodes such argv bytes
  assert "not valid UTF-8" in _error(capsys, "sample", w, "--prompt", bad_prompt)


MODULE = '''
import pathlib
MARKER = pathlib.Path(__file__).with_name("called")

def _mark(*_, **__):
  MARKER.write_text("called")
  return 1.0

def one_argument(hypothesis):
  return _mark()

def utility(hypothesis, reference):
  return _mark()

def reward_without_columns(prompts, completions):
  return [_mark()]

from lm.train.trackers import Tracker

class NoArguments(Tracker):
  def __init__(self):
    _mark()
'''


def test_named_callables_are_checked_by_signature_never_called(tmp_path, monkeypatch):
  (tmp_path / "hostile_callables.py").write_text(MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  marker = tmp_path / "called"
  try:
    with pytest.raises(LMError, match=r"must be a function of \(hypothesis, reference\)"):
      search.utility_fn("hostile_callables:one_argument")
    with pytest.raises(LMError, match="must be a function"):
      search.utility_fn("os:system")  # would run a shell command if probed with made-up arguments
    assert callable(search.utility_fn("hostile_callables:utility"))
    with pytest.raises(ConfigError, match=r"must be a function of \(prompts, completions, \*\*columns\)"):
      rewards.get("hostile_callables:reward_without_columns")
    with pytest.raises(ConfigError, match=r"must be made as NoArguments\(workdir, config, start_step\)"):
      trackers.get("hostile_callables.NoArguments")
    assert not marker.exists()
    assert search.mbr(["a", "b"], utility="hostile_callables:utility")[0] == 0  # called when used, as asked
    assert marker.exists()
  finally:
    sys.modules.pop("hostile_callables", None)
