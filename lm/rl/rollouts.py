"""Rollout assembly for `lm rl`: sample completions with their log-probabilities, cut them at eos or stop
strings, score them with the rewards, and lay prompt + completion sequences out as training rows (one per row,
or packed several to a row)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lm import families, parallel
from lm.decoding import rollout
from lm.families.base import UnitDecoder
from lm.rl import rewards as rewards_lib


class Rollouts:
  """Samples, rewards and the training rows of one step (prompt + completion per row, right-padded, or
  several to a row with `rl.pack`)."""

  def __init__(self, run, pairs, config):
    self.run, self.r, self.tok = run, config.rl, run.tokenizer
    self.pairs = pairs
    self.reward_fn = rewards_lib.combine(list(zip(self.r.rewards, self.r.reward_weights)))
    self.prompt_len = max(len(self.tok.prompt_ids(p)) for p, _ in pairs)
    self.T = self.prompt_len + self.r.max_new
    self.decoder = families.require(run.family, UnitDecoder, "lm rl (its rollouts)", run.config).unit_decoder(run)

  def sample(self, params, prompts: list[str], answers: list[str], group: int, seed: int):
    r, tok = self.r, self.tok
    ids = [tok.prompt_ids(p) for p in prompts]
    padded, lengths = rollout.left_pad(ids, tok.pad_id)
    padded = np.pad(padded, ((0, 0), (self.prompt_len - padded.shape[1], 0)), constant_values=tok.pad_id)
    stops = [x.encode("utf-8") for x in r.stop]
    single = [int(u[0]) for u in (tok.encode(x) for x in stops) if len(u) == 1]  # these stop the sampler itself
    with parallel.activation_context(self.run.mesh):
      out, logp, n = rollout.sample(self.decoder, params, jnp.asarray(padded), jnp.asarray(lengths),
                                    jax.random.PRNGKey(seed), max_new=r.max_new, temperature=r.temperature,
                                    top_k=r.top_k, top_p=r.top_p, stop_ids=jnp.asarray([tok.eos_id, *single]),
                                    group=group)
    out, logp, n = (np.asarray(parallel.to_host(x)) for x in (out, logp, n))
    cut = [cut_at_stop(tok, out[i, :n[i]], stops) for i in range(len(n))]
    n = np.array([k for k, _, _ in cut], n.dtype)
    texts, ended = [t for _, t, _ in cut], np.array([e for _, _, e in cut])
    rep = lambda xs: [x for x in xs for _ in range(group)]  # noqa: E731
    total, parts = self.reward_fn(rep(prompts), texts, answer=rep(answers), truncated=list(~ended),
                                  lengths=list(n), max_new=r.max_new)
    return dict(prompt_ids=[x for x in ids for _ in range(group)], ids=out, logp=logp, lengths=n, texts=texts,
                ended=ended, reward=total, parts=parts)

  def answer_prob(self, params, prompts: list[str], answers: list[str]) -> np.ndarray:
    """Probability, under the sampling distribution, of each answer then eos as the whole completion: a lower
    bound on one sample's expected `exact_answer` reward (which also accepts the answer's other tokenizations,
    whitespace around it, and a stop string or the max_new cut in place of eos). Where answers are units
    the model ends with eos, as in `synthetic:arith` / `synthetic:star` with the bytes tokenizer, it is the
    expected reward to within those rare variants."""
    r, tok = self.r, self.tok
    padded, lengths = rollout.left_pad([tok.prompt_ids(p) for p in prompts], tok.pad_id)
    units = [np.concatenate([tok.encode(a.encode("utf-8")), [tok.eos_id]]) for a in answers]
    ids, n = rollout.left_pad(units, tok.pad_id)  # right-aligned; flipped to left-aligned below
    ids = np.stack([np.roll(row, k) for row, k in zip(ids, n)])
    with parallel.activation_context(self.run.mesh):
      logp = rollout.score(self.run.model, params, jnp.asarray(padded), jnp.asarray(lengths), jnp.asarray(ids),
                           jnp.asarray(n), temperature=r.temperature, top_k=r.top_k, top_p=r.top_p)
    return np.exp(np.asarray(parallel.to_host(logp)).sum(axis=1))

  def pair_batch(self, triples) -> dict[str, np.ndarray]:
    """Rows 2i, 2i+1: pair i's prompt + chosen / rejected completion (+ eos), as `batch` lays rows out."""
    tok, N = self.tok, self.r.max_new
    prompts, ids, lengths = [], np.zeros((2 * len(triples), N), np.int32), []
    for i, (prompt, *completions) in enumerate(triples):
      for j, text in enumerate(completions):
        units = np.concatenate([tok.encode(text.encode("utf-8")), [tok.eos_id]])[:N]
        ids[2 * i + j, :len(units)] = units
        prompts.append(tok.prompt_ids(prompt)[-self.prompt_len:])
        lengths.append(len(units))
    s = dict(prompt_ids=prompts, ids=ids, lengths=np.array(lengths), logp=np.zeros(ids.shape, np.float32))
    return self.batch(s, np.zeros(len(lengths)))

  def batch(self, s, advantages: np.ndarray, pack: int = 0) -> dict[str, np.ndarray]:
    """Training rows: prompt + completion per row, right-padded to rl's longest prompt + max_new (T). With
    `pack` > 0, rows of pack x T slots hold several (first fit, longest first; segment ids 1, 2, ... and
    positions from 0 for each), as few rows as hold them among R, R/2, R/4, ... (R = B / pack rounded up to a
    multiple of the mesh's batch shards), so that a run compiles a handful of shapes."""
    B, T = len(s["lengths"]), self.T
    size = [len(p) + int(n) - 1 for p, n in zip(s["prompt_ids"], s["lengths"])]  # input slots of each sequence
    shards = math.lcm(self.run.mesh.shape["data"] * self.run.mesh.shape["fsdp"], jax.process_count())
    rows = math.ceil(math.ceil(B / pack) / shards) * shards if pack else B
    T = pack * T if pack else T
    bins, free = [], []
    for i in (sorted(range(B), key=lambda i: -size[i]) if pack else range(B)):
      j = next((j for j, room in enumerate(free) if room >= size[i]), None) if pack else None
      if j is None:
        bins.append([]), free.append(T)
        j = len(bins) - 1
      bins[j].append(i)
      free[j] -= size[i]
    while rows % 2 == 0 and rows // 2 >= len(bins) and (rows // 2) % shards == 0:
      rows //= 2
    out = {k: np.zeros((rows, T), np.int32) for k in ("segment_ids", "positions", "loss_mask")}
    inputs, targets = np.full((rows, T), self.tok.pad_id, np.int32), np.full((rows, T), self.tok.pad_id, np.int32)
    old, adv = np.zeros((rows, T), np.float32), np.zeros((rows, T), np.float32)
    for row, members in enumerate(bins):
      at = 0
      for k, i in enumerate(members):
        p, n = s["prompt_ids"][i], int(s["lengths"][i])
        units = np.concatenate([p, s["ids"][i, :n]]).astype(np.int32)
        span = slice(at, at + size[i])
        inputs[row, span], targets[row, span] = units[:-1], units[1:]
        out["segment_ids"][row, span], out["positions"][row, span] = k + 1, np.arange(size[i])
        out["loss_mask"][row, at + len(p) - 1:at + size[i]] = 1
        old[row, at + len(p) - 1:at + size[i]] = s["logp"][i, :n]
        adv[row, span] = advantages[i]
        at += size[i]
    return dict(out, inputs=inputs, targets=targets, old_logp=old, advantages=adv)


def cut_at_stop(tok, units: np.ndarray, stops: list[bytes]) -> tuple[int, str, bool]:
  """A sampled completion's (units kept for training, text for the rewards, ended on its own): it ends at eos
  (not in the text) or at the first unit whose prefix's text holds one of `stops` (its units kept, the stop
  string not in the text, as vLLM does by default); otherwise it was cut by max_new. Texts are decoded whole
  prefixes, so tokenizers whose units do not decode alone (SentencePiece-style spaces) read right."""
  units = np.asarray(units)
  eos = np.flatnonzero(units == tok.eos_id)
  keep, ended = (int(eos[0]) + 1, True) if len(eos) else (len(units), False)
  text = tok.decode_bytes(units[:keep - int(ended)])
  if any(stop and stop in text for stop in stops):
    for k in range(1, keep + 1):  # the shortest prefix holding a stop string
      prefix = tok.decode_bytes(units[:k])
      found = [prefix.find(stop) for stop in stops if stop and stop in prefix]
      if found:
        return k, prefix[:min(found)].decode("utf-8", errors="replace"), True
  return keep, text.decode("utf-8", errors="replace"), ended
