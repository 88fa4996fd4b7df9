"""Concept family: sentence chunks of bytes and tokens, decoder bits per byte batched vs step by step, the
concept objectives against float64 references, precomputed concepts, and runs through the ordinary loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import config as config_lib
from lm.data import tokenizers
from lm.families.chunked import data as chunks
from lm.data.tokenizers import ByteTokenizer
from lm.errors import ConfigError, DataError
from lm.objectives import token_nll
from lm.train import loop
from lm.train import run as run_lib

def small_config(*overrides):
  c = config_lib.load_experiment("concept_lcm:tiny")
  config_lib.apply_overrides(c, ["model.d_model=32", "model.num_layers=2", "model.d_ff=64", "model.num_heads=2",
                                 "model.num_kv_heads=2", "model.concept_dim=16", "model.encoder.d_model=16",
                                 "model.encoder.d_ff=32", "model.encoder.num_heads=2", "model.decoder.d_model=16",
                                 "model.decoder.d_ff=32", "model.decoder.num_heads=2", "data.num_chunks=6",
                                 "data.chunk_len=10", "data.batch_size=4", *overrides])
  return c


@pytest.fixture(scope="module")
def bpe():
  docs = [b"the cat sat on the mat. the dog sat on the log! " * 4, b"a bird flew over the tree. " * 5]
  return tokenizers.train_bpe(docs, 300)


def _prefix_batch(batch, ci, j, pad):
  """The batch as seen when predicting unit j of sentence ci: later sentences and units removed."""
  prefix = {k: np.asarray(v).copy() for k, v in batch.items()}
  prefix["unit_mask"][0, ci, j:] = 0
  prefix["units"][0, ci, j:] = pad
  prefix["unit_mask"][0, ci + 1:] = 0
  prefix["units"][0, ci + 1:] = pad
  for k in ("chunk_mask", "segment_ids"):
    prefix[k][0, ci + 1:] = 0
  return {k: jnp.asarray(v) for k, v in prefix.items()}


@pytest.mark.parametrize("units", ["bytes", "bpe"])
def test_batched_decoder_bits_per_byte_equals_step_by_step_decoding(units, bpe):
  """The batched pass scores sentence c's units from the concept predicted from sentences < c; the same number
  comes from the cached decoder (`backbone_step` per sentence, `decoder_step` per unit), one unit at a time."""
  tok = ByteTokenizer() if units == "bytes" else bpe
  c = config_lib.resolve_backend_defaults(small_config(*(["data.tokenizer=bpe"] if units == "bpe" else [])), "cpu")
  run = run_lib.build_run(c, tok)
  params = jax.tree.map(lambda p: p * 2.0, run.init(0).params)
  text = b"The cat sat. On a mat! Then a dog came by and sat too."
  data = chunks.ConceptData({"train": [text]}, tok, num_chunks=6, chunk_len=10, eval_max_bytes=200)
  rows, n_bytes = data._eval_rows([text], None)
  batch = {k: jnp.asarray(v[:1]) for k, v in rows.items()}
  nll_BxCxL1, _ = token_nll(run.model.apply({"params": params}, batch).logits, batch["targets"])
  batched = float(jnp.sum(nll_BxCxL1 * batch["loss_mask"]))

  decoder = run.decode_model()
  C, L = 6, 10
  units_np, mask_np = np.asarray(batch["units"]), np.asarray(batch["unit_mask"])
  bcache, dcache0 = decoder.init_cache(1, C, L)
  backbone_step = jax.jit(lambda cache, b: decoder.apply({"params": params, "cache": cache}, b,
                                                          method=decoder.backbone_step, mutable=["cache"]))
  decoder_step = jax.jit(lambda cache, *a: decoder.apply({"params": params, "cache": cache}, *a,
                                                          method=decoder.decoder_step, mutable=["cache"]))
  stepwise = 0.0
  for ci in range(int(rows["chunk_mask"][0].sum())):
    given = np.full((1, 1, L), tok.pad_id, np.int32) if ci == 0 else units_np[:, ci - 1:ci]
    out, mut = backbone_step(bcache, dict(units=jnp.asarray(given),
                                          unit_mask=jnp.asarray((given != tok.pad_id).astype(np.int32)),
                                          positions=jnp.full((1, 1), ci, jnp.int32)))
    bcache, context = mut["cache"], out["context"]
    dcache, prev = dcache0, 0
    for j in range(int(mask_np[0, ci].sum()) + 1):
      out, mut = decoder_step(dcache, context, jnp.full((1, 1), prev, jnp.int32), jnp.full((1, 1), j, jnp.int32))
      dcache, logits = mut["cache"], out[0, 0]
      target = int(batch["targets"][0, ci, j])
      stepwise += float(jax.nn.logsumexp(logits) - logits[target])
      prev = target
  assert abs(batched - stepwise) <= 1e-4 * abs(batched), (batched, stepwise)
  # ... and the full forward on growing prefixes agrees at a few places (no look-ahead across sentences).
  apply = jax.jit(lambda b: run.model.apply({"params": params}, b).logits)
  for ci, j in [(0, 0), (1, 2), (int(rows["chunk_mask"][0].sum()) - 1, 1)]:
    full = apply(batch)[0, ci, j]
    part = apply(_prefix_batch(batch, ci, j, tok.pad_id))[0, ci, j]
    np.testing.assert_allclose(np.asarray(full), np.asarray(part), rtol=1e-4, atol=1e-4)
  assert math.isfinite(batched / (math.log(2) * int(n_bytes.sum())))


def _corpus(tmp_path):
  sentences = ["The cat sat.", "A dog ran!", "Birds sing?", "Rain falls.", "Sun shines.", "Wind blows."]
  (tmp_path / "corpus").mkdir()
  for i in range(12):
    (tmp_path / "corpus" / f"{i}.txt").write_text(" ".join(sentences[(i + k) % 6] for k in range(20)))
  return [f"data.source={tmp_path / 'corpus'}", "data.val_fraction=0.2", "data.test_fraction=0.1"]


def test_concept_run_trains_evaluates_samples_and_resumes(tmp_path):
  from lm import cli
  overrides = [*_corpus(tmp_path), "train.steps=6", "train.log_every=1", "train.checkpoint_every=3",
               "eval.max_batches=2", "sample.max_new=0"]
  c = small_config(*overrides)
  c.objectives = [*c.objectives, dict(name="concept_recon", weight=0.5), dict(name="concept_contrastive")]
  summary = loop.train(c, str(tmp_path / "w"))
  assert math.isfinite(summary["val_bpb"])
  import json
  records = [json.loads(l) for l in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in records if "train_flops" in r]
  data = run_lib.load_data(c)
  run = run_lib.build_run(c, data.tokenizer)
  compute = run_lib.train_flops_per_step(run, data)
  per_step, per_step_data = compute["flops_per_step"], compute["flops_per_step_data"]
  from lm import aot
  # Logged FLOPs are what the step executes: the analytic count over every slot of the padded grid.
  np.testing.assert_allclose(per_step, aot.analytic_flops_per_step(run), rtol=1e-9)
  assert 0 < per_step_data < per_step  # the grid holds padding; the data-position count leaves it out
  assert [r["step"] for r in logged] == list(range(1, 7))
  np.testing.assert_allclose([r["train_flops"] for r in logged], [r["step"] * per_step for r in logged], rtol=1e-9)
  np.testing.assert_allclose([r["train_flops_data"] for r in logged], [r["step"] * per_step_data for r in logged],
                             rtol=1e-9)
  assert cli.main(["eval", str(tmp_path / "w")]) == 0
  result = json.loads((tmp_path / "w" / "eval_val.json").read_text())
  for key in ("oracle_bpb", "l2", "contrastive_accuracy", "flops_per_byte_encoder_forward",
              "flops_per_byte_backbone_forward", "flops_per_byte_decoder_forward"):
    assert math.isfinite(result[key]), key
  assert 0.0 <= result["contrastive_accuracy"] <= 1.0
  # The reconstruction objective costs a second decoder pass in training, not in inference.
  assert result["flops_per_byte_train"] > 3 * result["flops_per_byte_inference"]
  assert cli.main(["sample", str(tmp_path / "w"), "--prompt", "The cat sat. A", "--max-new", "30"]) == 0
  assert cli.main(["compare", str(tmp_path / "w"), "--json", str(tmp_path / "cmp.json")]) == 0
  row = json.loads((tmp_path / "cmp.json").read_text())[0]
  assert row["family"] == "concept" and row["train_flops"] > 0 and row["oracle_bpb"] == result["oracle_bpb"]
  assert row["flops_per_byte_encoder_forward"] == result["flops_per_byte_encoder_forward"]


def test_sentence_by_sentence_greedy_decoding_equals_full_forward_greedy():
  """Cached sentence-by-sentence greedy decoding picks, at every step, the argmax of the full forward pass over
  the sentences so far."""
  from lm.families.chunked.sampler import generate_chunks
  c = config_lib.resolve_backend_defaults(small_config(), "cpu")
  tok = ByteTokenizer()
  run = run_lib.build_run(c, tok)
  params = jax.tree.map(lambda p: p * 3.0, run.init(1).params)
  C, L = c.data.num_chunks, c.data.chunk_len
  decoder = run.decode_model()
  prompt = [list(b"Hi. "), list(b"So")]
  got = generate_chunks(decoder, params, prompt, max_new=25, chunk_len=L, max_chunks=C, rng=jax.random.PRNGKey(0),
                        eod_id=tok.eos_id, end_id=tok.vocab_size, pad_id=tok.pad_id, stop_ids=(256, 257))
  apply = jax.jit(lambda b: run.model.apply({"params": params}, b).logits)

  def logits_after(chunks):
    units = np.full((1, C, L), tok.pad_id, np.int32)
    for i, ch in enumerate(chunks):
      units[0, i, :len(ch)] = ch
    n = len(chunks)
    live = (np.arange(C) < n)[None].astype(np.int32)
    batch = dict(units=units, unit_mask=(units != tok.pad_id).astype(np.int32), chunk_mask=live, segment_ids=live,
                 positions=np.arange(C)[None].astype(np.int32) * live)
    return np.asarray(apply({k: jnp.asarray(v) for k, v in batch.items()})[0, n - 1, len(chunks[-1])])

  chunks, want = [list(ch) for ch in prompt], []
  while len(want) < 25 and len(chunks) < C:
    logits = logits_after(chunks)
    if len(chunks[-1]) == L:
      logits = np.where(np.isin(np.arange(len(logits)), [tok.eos_id, tok.vocab_size]), logits, -np.inf)
    unit = int(np.argmax(logits))
    if unit in (tok.eos_id, 256, 257):
      break
    if unit == tok.vocab_size:
      chunks.append([])
      continue
    chunks[-1].append(unit)
    want.append(unit)
  assert got == want, (got, want)


def test_precomputed_concepts_train_without_an_encoder_and_errors(tmp_path):
  overrides = _corpus(tmp_path)
  c = small_config(*overrides, "train.steps=3", "eval.max_batches=1", "sample.max_new=0")
  data = run_lib.load_data(c)
  rng = np.random.default_rng(0)
  for split in data.splits:
    np.save(tmp_path / f"emb_{split}.npy", rng.normal(size=(len(data.sentences(split)), 12)).astype(np.float32))
  pattern = str(tmp_path / "emb_{split}.npy")
  with pytest.raises(ConfigError, match="data.concept_embeddings are 12-dimensional but model.concept_dim=16; "
                                        "set --config.model.concept_dim=12"):
    run_lib.load_data(small_config(*overrides, f"data.concept_embeddings={pattern}"))
  c = small_config(*overrides, f"data.concept_embeddings={pattern}", "model.concept_dim=12", "train.steps=3",
                   "eval.max_batches=1", "sample.max_new=0")
  data = run_lib.load_data(c)
  rows = data.train_rows
  n = int(rows["chunk_mask"].sum())
  table = np.load(tmp_path / "emb_train.npy")
  np.testing.assert_array_equal(rows["concepts"].reshape(-1, 12)[:n], table)
  summary = loop.train(c, str(tmp_path / "w"))
  assert math.isfinite(summary["val_bpb"]) and "encoder" not in summary["state"].params
  from lm import cli
  # Sampling feeds the predicted concept back (no encoder); noised text has no precomputed concepts.
  assert cli.main(["sample", str(tmp_path / "w"), "--prompt", "The", "--max-new", "20", "--temperature", "0"]) == 0
  assert cli.main(["eval", str(tmp_path / "w"), "--noise", "swap:0.1"]) == 2
  # The MSE target is the table itself, so its loss is measured against the given vectors.
  np.save(tmp_path / "emb_val.npy", table[:5])
  with pytest.raises(DataError, match="the val table has shape"):
    run_lib.load_data(c)
  with pytest.raises(DataError, match=r"must contain '\{split\}'"):
    run_lib.load_data(small_config(*overrides, "data.concept_embeddings=emb.npy", "model.concept_dim=12"))


def test_lm_sentences_lists_the_rows_of_an_embedding_table(tmp_path, capsys):
  import json

  from lm import cli
  overrides = [*_corpus(tmp_path), "data.chunk_len=10"]
  out = tmp_path / "val.jsonl"
  assert cli.main(["sentences", "concept_lcm:tiny", *[f"--config.{o}" for o in overrides], "--split", "val",
                   "-o", str(out)]) == 0
  c = config_lib.load_experiment("concept_lcm:tiny")
  config_lib.apply_overrides(c, overrides)
  want = run_lib.load_data(c).sentences("val")
  got = [json.loads(line) for line in out.read_text().splitlines()]
  assert got == [t.decode() for t in want] and len(got) > 0
  assert cli.main(["sentences", "byte_hat:tiny"]) == 2
  assert "lm sentences needs a family with SentenceLister" in capsys.readouterr().err
