"""`lm.train.run.check` through `loop.train`: every config error is one line raised before data is read,
anything compiles or the workdir is written (the workdir does not exist afterwards)."""

import pytest

from lm import families
from lm.data import corpus, tokenizers
from lm.errors import CheckpointError, ConfigError, DataError
from lm.train import loop

FAST = ["train.steps=2", "data.batch_size=4", "data.seq_len=16", "train.eval_every=0", "eval.max_batches=1"]


@pytest.fixture
def text_dir(tmp_path):
  d = tmp_path / "text"
  d.mkdir()
  for i in range(3):
    (d / f"{i}.txt").write_text("a few words of text. " * 20)
  return d


@pytest.fixture
def no_data(monkeypatch):
  """Loading data or training a tokenizer fails the test: the checks must come first."""
  monkeypatch.setattr(corpus, "load_documents", lambda *a, **k: pytest.fail("data was loaded before the check"))
  monkeypatch.setattr(tokenizers, "train_bpe", lambda *a, **k: pytest.fail("a tokenizer trained before the check"))


@pytest.mark.parametrize("experiment, overrides, error, message", [
    ("token_ntp:tiny", ["objectives.0.name=ntpp"], ConfigError, "unknown objective 'ntpp'; did you mean 'ntp'? "),
    ("token_ntp:tiny", ["objectives.0.name=nonsense_xyz"], ConfigError, "unknown objective 'nonsense_xyz'; registered: "),
    ("token_ntp:tiny", ["objectives.0.zloss=0.1"], ConfigError, "objective 'ntp' has no option 'zloss'; did you mean 'z_loss'?"),
    ("token_mtp:tiny", ["objectives.0.n=0"], ConfigError, "objective 'mtp': n=0 must be at least 1"),
    ("token_ntp:tiny", ["objectives.0.z_loss=big"], ConfigError, "objective 'ntp': option z_loss='big' must be a number"),
    ("token_mtp:tiny", ["objectives.0.equal_params=true", "objectives.0.n=9"], ConfigError,
     "heads take 8 of model.num_layers=4 layers from the trunk"),
    ("token_ntp:tiny", ["mesh.tensor=2"], ConfigError, "fixed axes multiply to 2, which does not divide the 1 device present"),
    ("token_ntp:tiny", ["train.trackers=jsonl,tensorbord"], ConfigError, "unknown tracker 'tensorbord'; did you mean"),
    ("token_rho:tiny", ["objectives.0.reference=/nonexistent/ref"], CheckpointError,
     "reference workdir '/nonexistent/ref' holds no checkpoint"),
    ("byte_hat:tiny", ["data.tokenizer=bpe"], ConfigError, "reads raw bytes; set data.tokenizer='bytes'"),
    ("token_ntp:tiny", ["data.tokenizer=wordpiece"], DataError, "tokenizer 'wordpiece' is not a known tokenizer"),
    ("token_ntp:tiny", ["data.completion_after==", "data.eval_max_bytes=100"], ConfigError,
     "scores held-out documents whole, so data.eval_max_bytes=100 cannot apply"),
    ("token_ntp:tiny", ["objectives.0.name=top"], ConfigError, "'top' train extra heads only"),
])
def test_config_errors_come_before_anything_is_written(tmp_path, no_data, experiment, overrides, error, message):
  workdir = tmp_path / "w"
  with pytest.raises(error) as e:
    loop.train(families.load_config(experiment, FAST + overrides), str(workdir))
  assert message in str(e.value) and "\n" not in str(e.value)
  assert not workdir.exists()


@pytest.mark.parametrize("experiment, batch, rows", [("token_ntp:tiny", 32, "at most 20 rows of 64 units"),
                                                     ("byte_hat:tiny", 128, "at most 80 rows of 16 units")])
def test_a_corpus_smaller_than_one_batch_fails_from_its_file_sizes(tmp_path, text_dir, no_data, experiment, batch,
                                                                   rows):
  # (1260 bytes + a bos and an eos per file) / units per row (token: seq_len 64; byte_hat: 16 words a row)
  workdir = tmp_path / "w"
  with pytest.raises(DataError) as e:
    loop.train(families.load_config(experiment, [f"data.source={text_dir}", f"data.batch_size={batch}"]), str(workdir))
  assert str(e.value) == (f"data.source '{text_dir}': 1260 bytes in 3 files pack into {rows}, fewer than one "
                          f"batch of data.batch_size={batch}; lower data.batch_size or the row length, or add text")
  assert not workdir.exists()


def test_a_missing_source_and_an_unwritable_workdir_fail_first(tmp_path, no_data):
  with pytest.raises(DataError, match="path '/nonexistent/corpus' does not exist"):
    loop.train(families.load_config("token_ntp:tiny", ["data.source=/nonexistent/corpus"]), str(tmp_path / "w"))
  (tmp_path / "file").write_text("")
  with pytest.raises(CheckpointError, match=r"workdir '.*file/w' cannot be created: '.*file' is not a directory"):
    loop.train(families.load_config("token_ntp:tiny", []), str(tmp_path / "file" / "w"))


@pytest.mark.parametrize("experiment", ["token_mtp:tiny"])
def test_init_with_the_rolled_scan_equals_the_unrolled_model_init(experiment):
  """`Run.init` compiles its one-off program with `scan_unroll=1`; the state is the one the run's own
  (unrolled on CPU) model gives, bit for bit."""
  import functools

  import chex
  import jax

  from lm.train import run as run_lib
  from lm.train.state import init_state
  config = run_lib.check(families.load_config(experiment, ["model.scan_unroll=4"]))  # unrolled on any backend
  assert config.model.scan_unroll == config.model.num_layers == 4
  run = run_lib.build_run(config, tokenizers.ByteTokenizer())
  unrolled = jax.jit(functools.partial(init_state, run.model, run.tx, example_batch=run.example_batch(1)),
                     out_shardings=run.state_shardings)(jax.random.PRNGKey(3))
  chex.assert_trees_all_equal(run.init(3), unrolled)


def test_errors_known_only_once_the_data_is_built_still_write_nothing(tmp_path):
  """The embedded corpus is sized only when built: a batch it cannot fill fails after loading, and still
  before anything is written."""
  workdir = tmp_path / "w"
  with pytest.raises(DataError, match=r"fewer than one batch of 100000"):
    loop.train(families.load_config("token_ntp:tiny", ["data.batch_size=100000"]), str(workdir))
  assert not workdir.exists()
