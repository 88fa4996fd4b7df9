"""Byte-hierarchical family: batched bits per byte equals byte-at-a-time decoding, targets and byte counts of
the chunk pipeline, and a short training run through the ordinary loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from lm import config as config_lib
from lm.data import segment
from lm.families.chunked.data import BYTE_PAD, chunk_targets, pack_chunk_eval, word_chunks
from lm.data.tokenizers import ByteTokenizer
from lm.models import flops
from lm.families.chunked.sampler import generate_chunks
from lm.objectives import token_nll
from lm.train import loop
from lm.train import run as run_lib

EOD, EOW = 258, 259


def small_config(*overrides):
  c = config_lib.load_experiment("byte_hat:tiny")
  config_lib.apply_overrides(c, ["model.d_model=32", "model.num_layers=2", "model.d_ff=64", "model.num_heads=2",
                                 "model.num_kv_heads=2", "model.encoder.d_model=16", "model.encoder.d_ff=32",
                                 "model.encoder.num_heads=2", "model.decoder.d_model=16", "model.decoder.d_ff=32",
                                 "model.decoder.num_heads=2", "data.num_chunks=8", "data.chunk_len=6",
                                 "data.batch_size=4", *overrides])
  return c


def test_eval_rows_score_every_byte_word_end_and_segment_end():
  segments = [b"Hello, world! A test.", b"x" * 20, "Caf\u00e9 ok".encode()]
  rows, bytes_per_row = pack_chunk_eval(segments, num_chunks=4, chunk_len=6)
  rows = chunk_targets(rows, EOD, EOW)
  n_pieces = sum(-(-len(segment.chunk_words(segment.split_hat_words(s), 6)) // 4) for s in segments)
  assert int(bytes_per_row.sum()) == sum(map(len, segments)) + n_pieces
  t, m = rows["targets"], rows["loss_mask"] > 0
  assert int((t[m] == EOD).sum()) == n_pieces  # one end-of-segment event per scored piece
  assert int(((t[m] < 256) | (t[m] == EOD)).sum()) == int(bytes_per_row.sum())  # the units that carry bytes
  assert t[m & (t < 256)].astype(np.uint8).tobytes() == b"".join(segments)  # row-major order = text order
  assert np.all(t[~m] == BYTE_PAD)


def test_batched_bits_per_byte_equals_decoding_one_byte_at_a_time():
  c = config_lib.resolve_backend_defaults(small_config(), "cpu")
  run = run_lib.build_run(c, ByteTokenizer())
  params = run.init(0).params
  text = b"The cat sat. On a mat!"
  rows, _ = pack_chunk_eval([text], 8, 6)
  batch = {k: jnp.asarray(v) for k, v in chunk_targets(rows, EOD, EOW).items()}
  apply = jax.jit(lambda b: run.model.apply({"params": params}, b).logits)
  nll_BxCxL1, _ = token_nll(apply(batch), batch["targets"])
  batched = float(jnp.sum(nll_BxCxL1 * batch["loss_mask"]))
  # One unit at a time: only the words before c and the bytes of word c before j are given.
  stepwise = 0.0
  units = np.asarray(batch["units"])
  unit_mask = np.asarray(batch["unit_mask"])
  for ci in range(int(rows["chunk_mask"].sum())):
    for j in range(int(unit_mask[0, ci].sum()) + 1):
      prefix = {k: np.asarray(v).copy() for k, v in batch.items()}
      prefix["unit_mask"][0, ci, j:] = 0
      prefix["units"][0, ci, j:] = BYTE_PAD
      prefix["unit_mask"][0, ci + 1:] = 0
      prefix["units"][0, ci + 1:] = BYTE_PAD
      prefix["chunk_mask"][0, ci + 1:] = 0
      prefix["segment_ids"][0, ci + 1:] = 0
      logits = apply({k: jnp.asarray(v) for k, v in prefix.items()})[0, ci, j]
      target = int(batch["targets"][0, ci, j])
      stepwise += float(jax.nn.logsumexp(logits) - logits[target])
  assert abs(batched - stepwise) <= 1e-4 * abs(batched), (batched, stepwise)
  n_bytes = len(text) + 1
  assert math.isfinite(batched / (math.log(2) * n_bytes))


def test_hierarchical_run_trains_evaluates_and_resumes(tmp_path, capsys):
  corpus = tmp_path / "corpus"  # not tmp_path itself: the runs write their checkpoints there
  corpus.mkdir()
  words = ["alpha", "beta,", "gamma.", "delta", "epsilon!", "zeta"]
  for i in range(12):
    (corpus / f"{i}.txt").write_text(" ".join(words[(i + k) % 6] for k in range(60)))
  overrides = [f"data.source={corpus}", "data.val_fraction=0.2", "data.test_fraction=0", "train.steps=8",
               "train.log_every=1", "train.checkpoint_every=4", "eval.max_batches=2"]
  summary = loop.train(small_config(*overrides), str(tmp_path / "w"))
  assert math.isfinite(summary["val_bpb"]) and summary["val_n_bytes"] > 0
  resumed = loop.train(small_config(*overrides[:-3], "train.steps=10", "train.log_every=1",
                                    "train.checkpoint_every=4", "eval.max_batches=2"), str(tmp_path / "w"))
  assert resumed["step"] == 10
  run, params = run_lib.restore_for_inference(tmp_path / "w")
  assert run.config.model.family == "hierarchical" and "encoder" in params and "decoder" in params
  # What only a unit decoder or the token family's heads can do is one line naming the missing capability.
  from lm import cli
  for flags, capability in ((["--method", "beam"], "UnitDecoder"), (["--speculative"], "Speculative")):
    assert cli.main(["sample", str(tmp_path / "w"), "--prompt", "alpha ", "--max-new", "4", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"needs a family with {capability}" in err and "'hierarchical'" in err, err


def test_flops_per_byte_by_component():
  c = small_config()
  f = flops.chunked_per_byte(c.model, 259, chunk_len=6, num_chunks=8, n_bytes=100, n_units=100, n_chunks=20)
  assert abs(f["forward"] - (f["encoder_forward"] + f["backbone_forward"] + f["decoder_forward"])) < 1e-6 * f["forward"]
  assert f["train"] == 3 * f["forward"]
  config_lib.apply_overrides(c, ["model.decoder.num_layers=4"])
  g = flops.chunked_per_byte(c.model, 259, chunk_len=6, num_chunks=8, n_bytes=100, n_units=100, n_chunks=20)
  one_layer = flops.transformer_per_position(16, 1, 2, 2, 32, keys=3.5)  # decoder width 16, (L + 1) / 2 keys
  assert abs((g["decoder_forward"] - f["decoder_forward"]) - 2 * one_layer * 120 / 100) < 1e-6 * g["forward"]
  assert g["encoder_forward"] == f["encoder_forward"] and g["backbone_forward"] == f["backbone_forward"]


def test_word_by_word_greedy_decoding_equals_full_forward_greedy():
  """Cached word-by-word greedy decoding picks, at every step, the argmax of the full (training) forward pass
  over the words so far: the same model read two ways."""
  c = config_lib.resolve_backend_defaults(small_config(), "cpu")
  run = run_lib.build_run(c, ByteTokenizer())
  params = jax.tree.map(lambda p: p * 3.0, run.init(1).params)  # confident, varied predictions
  C, L = c.data.num_chunks, c.data.chunk_len
  decoder = run.decode_model()
  prompt = b"The cat sat"
  got = bytes(generate_chunks(decoder, params, [ids.tolist() for _, ids in word_chunks(prompt, L)], max_new=14,
                              chunk_len=L, max_chunks=C, rng=jax.random.PRNGKey(0), eod_id=EOD, end_id=EOW,
                              pad_id=BYTE_PAD, stop_ids=range(256, decoder.decoder_cfg.padded_vocab)))
  apply = jax.jit(lambda b: run.model.apply({"params": params}, b).logits)

  def logits_after(chunks):  # chunks: finished words then the current (possibly empty) word
    units = np.full((1, C, L), BYTE_PAD, np.int32)
    for i, ch in enumerate(chunks):
      units[0, i, :len(ch)] = np.frombuffer(bytes(ch), np.uint8)
    n = len(chunks)
    batch = dict(units=units, unit_mask=(units < 256).astype(np.int32),
                 chunk_mask=(np.arange(C) < n)[None].astype(np.int32),
                 segment_ids=(np.arange(C) < n)[None].astype(np.int32),
                 positions=np.arange(C)[None].astype(np.int32) * (np.arange(C) < n)[None])
    return apply({k: jnp.asarray(v) for k, v in batch.items()})[0, n - 1, len(chunks[-1])]

  chunks = [bytearray(w) for w in segment.chunk_words(segment.split_hat_words(prompt), L)]
  want = bytearray()
  while len(want) < 14 and len(chunks) < C:
    logits = np.asarray(logits_after(chunks))
    if len(chunks[-1]) == L:
      logits = np.where(np.isin(np.arange(len(logits)), [EOD, EOW]), logits, -np.inf)
    unit = int(np.argmax(logits))
    if unit == EOD:
      break
    if unit >= 256:
      chunks.append(bytearray())
      continue
    chunks[-1].append(unit)
    want.append(unit)
  assert got == bytes(want) and len(got) == 14, (got, bytes(want))
  assert len(chunks) > 3  # several words were decoded and fed back through the encoder and backbone
