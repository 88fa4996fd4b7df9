"""Concept family: sentence chunks of bytes and tokens, decoder bits per byte batched vs step by step, the
concept objectives against float64 references, precomputed concepts, and runs through the ordinary loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import config as config_lib
from lm import objectives
from lm.data import pipeline, segment, tokenizers
from lm.data.tokenizers import ByteTokenizer
from lm.errors import ConfigError, DataError
from lm.models.base import ModelOutputs
from lm.objectives.token import token_nll
from lm.train import loop

TEXT = [b"The cat sat. It was warm!\nThen it left? Yes. " * 3, b"A dog barked.  Loudly and for a long while.",
        "Caf\u00e9 s\u00e4tze. \u4f60\u597d\u3002\u518d\u89c1\uff01 ok".encode()]


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


@pytest.mark.parametrize("units", ["bytes", "bpe"])
def test_sentence_chunks_are_lossless_and_fit(units, bpe):
  tok = ByteTokenizer() if units == "bytes" else bpe
  for doc in TEXT:
    chunks = pipeline.sentence_chunks(doc, 7, tok)
    assert b"".join(text for text, _ in chunks) == doc
    assert all(1 <= len(ids) <= 7 for _, ids in chunks)
    assert b"".join(tok.decode_bytes(ids) for _, ids in chunks) == doc
    # Chunks never straddle sentences: every sentence is the concatenation of consecutive chunks.
    ends = np.cumsum([len(t) for t, _ in chunks])
    assert set(np.cumsum([len(s) for s in segment.split_sentences(doc)])) <= set(ends)


def test_sentence_split_is_deterministic_on_cjk_and_newlines():
  assert segment.split_sentences("\u4f60\u597d\u3002\u518d\u89c1\uff01 ok".encode()) == [
      "\u4f60\u597d\u3002".encode(), "\u518d\u89c1\uff01 ".encode(), b"ok"]
  assert segment.split_sentences(b"a\n\nb. c") == [b"a\n\n", b"b. ", b"c"]


@pytest.mark.parametrize("units", ["bytes", "bpe"])
def test_eval_rows_score_every_unit_sentence_end_and_segment_end(units, bpe):
  tok = ByteTokenizer() if units == "bytes" else bpe
  data = pipeline.ConceptData({"train": TEXT, "val": TEXT}, tok, num_chunks=4, chunk_len=8, eval_max_bytes=60)
  segments = data.eval_segments(TEXT)
  rows, bytes_per_row = data._eval_rows(segments, "val")
  eos, eow = tok.eos_id, tok.vocab_size
  n_pieces = sum(-(-len(pipeline.sentence_chunks(s, 8, tok)) // 4) for s in segments)
  assert int(bytes_per_row.sum()) == sum(map(len, segments)) + n_pieces
  t, m = rows["targets"], rows["loss_mask"] > 0
  assert int((t[m] == eos).sum()) == n_pieces and int((t[m] == eow).sum()) == int(rows["chunk_mask"].sum()) - n_pieces
  text_units = t[m & (t != eos) & (t != eow)]
  assert tok.decode_bytes(text_units) == b"".join(segments)  # row-major order = text order
  assert data.sentences("val") == [c for s in segments for c, _ in pipeline.sentence_chunks(s, 8, tok)]


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
  comes from the cached decoder (step='backbone' per sentence, step='decoder' per unit), one unit at a time."""
  from lm.models.base import build_model
  tok = ByteTokenizer() if units == "bytes" else bpe
  c = config_lib.resolve_backend_defaults(small_config(*(["data.tokenizer=bpe"] if units == "bpe" else [])), "cpu")
  run = loop.prepare(c, tok)
  params = jax.tree.map(lambda p: p * 2.0, run.init(0).params)
  text = b"The cat sat. On a mat! Then a dog came by and sat too."
  data = pipeline.ConceptData({"train": [text]}, tok, num_chunks=6, chunk_len=10, eval_max_bytes=200)
  rows, n_bytes = data._eval_rows([text], None)
  batch = {k: jnp.asarray(v[:1]) for k, v in rows.items()}
  nll_BxCxL1, _ = token_nll(run.model.apply({"params": params}, batch).logits, batch["targets"])
  batched = float(jnp.sum(nll_BxCxL1 * batch["loss_mask"]))

  decoder = build_model(c.model, tok.vocab_size, decode=True)
  C, L = 6, 10

  def init(b, step):
    shapes = jax.eval_shape(lambda: decoder.init(jax.random.PRNGKey(0), b, step=step))["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  units_np, mask_np = np.asarray(batch["units"]), np.asarray(batch["unit_mask"])
  bcache = init(dict(units=jnp.zeros((1, C, L), jnp.int32), unit_mask=jnp.zeros((1, C, L), jnp.int32),
                     positions=jnp.zeros((1, C), jnp.int32)), "backbone")
  dcache0 = init(dict(inputs=jnp.zeros((1, L + 1), jnp.int32), positions=jnp.zeros((1, L + 1), jnp.int32),
                      context=jnp.zeros((1, c.model.decoder.d_model))), "decoder")
  backbone_step = jax.jit(lambda cache, b: decoder.apply({"params": params, "cache": cache}, b, step="backbone",
                                                          mutable=["cache"]))
  decoder_step = jax.jit(lambda cache, b: decoder.apply({"params": params, "cache": cache}, b, step="decoder",
                                                         mutable=["cache"]))
  stepwise = 0.0
  for ci in range(int(rows["chunk_mask"][0].sum())):
    given = np.full((1, 1, L), tok.pad_id, np.int32) if ci == 0 else units_np[:, ci - 1:ci]
    out, mut = backbone_step(bcache, dict(units=jnp.asarray(given),
                                          unit_mask=jnp.asarray((given != tok.pad_id).astype(np.int32)),
                                          positions=jnp.full((1, 1), ci, jnp.int32)))
    bcache, context = mut["cache"], out.aux["context"]
    dcache, prev = dcache0, 0
    for j in range(int(mask_np[0, ci].sum()) + 1):
      out, mut = decoder_step(dcache, dict(inputs=jnp.full((1, 1), prev, jnp.int32),
                                           positions=jnp.full((1, 1), j, jnp.int32), context=context))
      dcache, logits = mut["cache"], out.logits[0, 0]
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


def _outputs(rng, B=2, C=5, K=6):
  k1, k2 = jax.random.split(rng)
  pred, true = jax.random.normal(k1, (B, C, K)), jax.random.normal(k2, (B, C, K))
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.int32)
  return ModelOutputs(logits=jnp.zeros((B, C, 3, 4)), aux={"concept_pred": pred, "concept_target": true}), mask


def _ctx():
  return objectives.LossContext(step=jnp.asarray(0), unit_bytes=jnp.ones((4,), jnp.float32))


def test_concept_mse_and_contrastive_match_float64_loops():
  out, mask = _outputs(jax.random.PRNGKey(0))
  batch = {"chunk_mask": mask}
  p, t, m = (np.asarray(x, np.float64) for x in (out.aux["concept_pred"], out.aux["concept_target"], mask))
  mse = objectives.build([dict(name="concept_mse")])(out, batch, _ctx())
  want = sum(np.mean((p[b, c] - t[b, c]) ** 2) for b in range(2) for c in range(5) if m[b, c])
  l2 = sum(np.linalg.norm(p[b, c] - t[b, c]) for b in range(2) for c in range(5) if m[b, c])
  np.testing.assert_allclose(float(mse.total), want, rtol=1e-5)
  np.testing.assert_allclose(float(mse.metrics["concept_mse/l2_sum"]), l2, rtol=1e-5)
  assert float(mse.count) == m.sum()

  cells = [(b, c) for b in range(2) for c in range(5) if m[b, c]]
  unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
  for negatives in ("batch", "row"):
    fn = objectives.build([dict(name="concept_contrastive", temperature=0.5, negatives=negatives)])
    got = fn(out, batch, _ctx())
    total, hits = 0.0, 0
    for (b, c) in cells:
      cands = [cell for cell in cells if negatives == "batch" or cell[0] == b]
      s = np.array([unit(p[b, c]) @ unit(t[cb, cc]) / 0.5 for cb, cc in cands])
      own = cands.index((b, c))
      total += np.log(np.exp(s).sum()) - s[own]
      hits += int(np.argmax(s) == own)
    np.testing.assert_allclose(float(got.total), total, rtol=1e-5)
    assert float(got.metrics["concept_contrastive/accuracy_sum"]) == hits


def test_concept_mse_stop_gradient_keeps_the_target_still():
  out, mask = _outputs(jax.random.PRNGKey(1))

  def grads(stop):
    fn = objectives.build([dict(name="concept_mse", stop_gradient=stop)])
    return jax.grad(lambda aux: fn(ModelOutputs(out.logits, aux), {"chunk_mask": mask}, _ctx()).total)(out.aux)
  assert float(jnp.abs(grads(True)["concept_target"]).sum()) == 0.0
  assert float(jnp.abs(grads(False)["concept_target"]).sum()) > 0.0
  np.testing.assert_allclose(grads(True)["concept_pred"], grads(False)["concept_pred"])


def test_concept_objective_errors():
  with pytest.raises(ConfigError, match="negatives='doc'; choose 'batch' or 'row'"):
    objectives.build([dict(name="concept_contrastive", negatives="doc")])
  token_out = ModelOutputs(logits=jnp.zeros((1, 2, 4)))
  with pytest.raises(ConfigError, match="needs a concept model; set model.family='concept'"):
    objectives.build([dict(name="concept_mse")])(token_out, {"chunk_mask": jnp.ones((1, 2))}, _ctx())
  c = config_lib.load_experiment("token_ntp:tiny")
  c.objectives = [dict(name="ntp"), dict(name="concept_recon")]
  with pytest.raises(ConfigError, match=r"model.family='token' has no \['recon'\] head"):
    loop.prepare(config_lib.resolve_backend_defaults(c, "cpu"), ByteTokenizer())


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
  per_step = loop.train_flops_per_step(c, loop.load_data(c))["flops_per_step"]
  assert [r["step"] for r in logged] == list(range(1, 7))
  np.testing.assert_allclose([r["train_flops"] for r in logged], [r["step"] * per_step for r in logged], rtol=1e-9)
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
  from lm.eval.generate import generate_chunks
  from lm.models.base import build_model
  c = config_lib.resolve_backend_defaults(small_config(), "cpu")
  tok = ByteTokenizer()
  run = loop.prepare(c, tok)
  params = jax.tree.map(lambda p: p * 3.0, run.init(1).params)
  C, L = c.data.num_chunks, c.data.chunk_len
  decoder = build_model(c.model, tok.vocab_size, decode=True)
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
  data = loop.load_data(c)
  rng = np.random.default_rng(0)
  for split in data.splits:
    np.save(tmp_path / f"emb_{split}.npy", rng.normal(size=(len(data.sentences(split)), 12)).astype(np.float32))
  pattern = str(tmp_path / "emb_{split}.npy")
  with pytest.raises(ConfigError, match="data.concept_embeddings are 12-dimensional but model.concept_dim=16; "
                                        "set --config.model.concept_dim=12"):
    loop.load_data(small_config(*overrides, f"data.concept_embeddings={pattern}"))
  c = small_config(*overrides, f"data.concept_embeddings={pattern}", "model.concept_dim=12", "train.steps=3",
                   "eval.max_batches=1", "sample.max_new=0")
  data = loop.load_data(c)
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
    loop.load_data(c)
  with pytest.raises(DataError, match=r"must contain '\{split\}'"):
    loop.load_data(small_config(*overrides, "data.concept_embeddings=emb.npy", "model.concept_dim=12"))


def test_lm_sentences_lists_the_rows_of_an_embedding_table(tmp_path, capsys):
  import json

  from lm import cli
  overrides = [*_corpus(tmp_path), "data.chunk_len=10"]
  out = tmp_path / "val.jsonl"
  assert cli.main(["sentences", "concept_lcm:tiny", *[f"--config.{o}" for o in overrides], "--split", "val",
                   "-o", str(out)]) == 0
  c = config_lib.load_experiment("concept_lcm:tiny")
  config_lib.apply_overrides(c, overrides)
  want = loop.load_data(c).sentences("val")
  got = [json.loads(line) for line in out.read_text().splitlines()]
  assert got == [t.decode() for t in want] and len(got) > 0
  assert cli.main(["sentences", "byte_hat:tiny"]) == 2
  assert "lists the sentences of a concept-family experiment" in capsys.readouterr().err
