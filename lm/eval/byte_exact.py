"""Bits per byte of a token model by the byte-level marginal: every tokenization of a held-out segment, not
only the canonical one (`lm eval --byte-exact`).

A token model gives a text probability through each of its tokenizations; canonical bits per byte scores one
of them, the one the tokenizer produces. The byte-level probability sums them all (`lm.decoding.bytes`,
position by position over the text's bytes), so it is at least the canonical one: byte-exact bits per byte
is at most canonical bits per byte, and the gap is what the canonical view leaves out (Chirkova et al. 2023:
usually under 0.5%; Vieira et al. 2025). Both are reported over the same segments, with the framework's
byte count (each segment's bytes plus one end-of-segment event). With `beam` the sum keeps the k most
probable tokenizations of each prefix, and always the canonical one: a lower bound, still at least canonical.
"""

from __future__ import annotations

import math
import time

import jax.numpy as jnp
import numpy as np

from lm import families, parallel
from lm.decoding import bytes as bytes_lib
from lm.decoding import methods, steps
from lm.errors import LMError
from lm.families.base import UnitDecoder
from lm.decoding import rollout


def byte_model(run, params, beam: int = 0) -> bytes_lib.ByteModel:
  """The byte-level view of a token run after a document start: prefix, text and next-byte probabilities."""
  families.require(run.family, UnitDecoder, "byte-level probabilities (they marginalise a unit decoder's "
                   "tokenizations)", run.config)
  tok = run.tokenizer
  methods.check_byte_units(tok, "byte-level probabilities")
  fn = steps.next_log_probs_fn(run.model, params, np.array([tok.bos_id], np.int32))
  return bytes_lib.ByteModel(fn, tok.id_bytes()[:run.model.cfg.vocab_size], tok.eos_id, beam=beam)


def evaluate(run, params, data, split: str = "val", segments: int = 32, beam: int = 16) -> dict:
  """Canonical and byte-exact bits per byte over the first `segments` held-out segments of `split`."""
  if run.config.data.completion_after:
    raise LMError("--byte-exact scores whole segments; this run scores completions only (data.completion_after)")
  model = byte_model(run, params)
  tok = run.tokenizer
  texts = data.eval_segments(data.splits[split])[:segments]
  if not texts:
    raise LMError(f"the {split} split has no held-out segments to score")
  t0 = time.time()
  canonical, marginal, n_bytes = 0.0, 0.0, 0
  prompt = jnp.array([[tok.bos_id]], jnp.int32)
  for text in texts:
    ids = tuple(int(v) for v in tok.encode(text))
    completion = jnp.array([ids + (tok.eos_id,)], jnp.int32)  # one teacher-forced pass: the framework's bpb
    canonical += float(parallel.to_host(rollout.score(run.model, params, prompt, jnp.array([1]), completion,
                                                      jnp.array([len(ids) + 1]))).astype(np.float64).sum())
    marginal += model.text_log_prob(text, beam=beam, keep=ids)
    n_bytes += len(text) + 1
  per_byte = lambda log_p: -log_p / (math.log(2) * n_bytes)  # noqa: E731
  out = dict(canonical_bpb=per_byte(canonical), byte_exact_bpb=per_byte(marginal), segments=len(texts),
             n_bytes=n_bytes, beam=beam, prefixes_scored=model.forward_passes(), seconds=time.time() - t0,
             split=split)  # prefixes_scored: the marginal's model rows (canonical: one pass per segment)
  out["gap_bpb"] = out["canonical_bpb"] - out["byte_exact_bpb"]
  out["gap_percent"] = 100 * out["gap_bpb"] / out["canonical_bpb"]
  return out
