"""Probes of what a training objective teaches, scored on held-out synthetic documents (`lm/data/synthetic.py`).

  star       star-graph path-finding (Bachmann & Nagarajan 2024): exact-path accuracy of greedy generation
             after the prompt; chance is 1 / degree. Teacher-forced accuracy is reported beside it, whole and in
             its two parts: the first decision after the start node, and the later steps (edge lookups).
             Next-token training's "Clever Hans" shortcut shows as later steps near 1 with the first decision
             near 1 / degree.
  induction  name induction (Gloeckle et al. 2024, section 4.1): teacher-forced accuracy on a name's units after
             its first unit at its second and later occurrences; chance is 1/26 per byte.

Each probe reads the generator options (degree, path_len, ...) from the run's own `data.source` when that is
a synthetic source, and draws its documents from another seed (default: the training seed + 1).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lm.data import synthetic
from lm.errors import ConfigError, DataError
from lm.decoding.generate import generate

LETTERS = 26  # names are random letters: the chance of guessing one


# ---------------------------------------------------------------------------------------------------------
# Units and byte spans.

def unit_spans(tokenizer, ids, doc: bytes) -> tuple[np.ndarray, np.ndarray]:
  """Byte offsets [start, end) in `doc` of each unit of `ids` (its tokenization, no special ids)."""
  ids = np.asarray(ids, np.int64)
  lengths = np.asarray(tokenizer.unit_bytes(), np.int64)[ids] if len(ids) else np.zeros(0, np.int64)
  ends = np.cumsum(lengths)
  if (ends[-1] if len(ends) else 0) != len(doc):
    raise DataError(f"tokenizer {type(tokenizer).__name__}: units do not map onto the document's bytes "
                    f"({int(ends[-1]) if len(ends) else 0} != {len(doc)}); the probes need bytes or byte-level BPE")
  return ends - lengths, ends


def name_units(starts, ends, spans, later: bool = True) -> list[np.ndarray]:
  """Per occurrence (second and later, or only first): indices of the units lying inside the name after its
  first byte. Occurrences with no such unit (a BPE token covering the whole name) are dropped."""
  starts, ends = np.asarray(starts), np.asarray(ends)
  out = []
  for lo, hi, occurrence in spans:
    if (occurrence > 0) != later:
      continue
    idx = np.flatnonzero((starts >= lo + 1) & (ends <= hi) & (ends > starts))
    if len(idx):
      out.append(idx)
  return out


def score_units(targets, predictions, groups: list[np.ndarray]) -> dict[str, int]:
  """Counts of correct units and of groups (names) whose units are all correct; units past the end of
  `predictions` (truncated at seq_len) count as wrong."""
  targets, predictions = np.asarray(targets), np.asarray(predictions)
  units = correct = names = names_correct = 0
  for idx in groups:
    seen = idx[idx < len(predictions)]
    ok = np.zeros(len(idx), bool)
    ok[: len(seen)] = targets[seen] == predictions[seen]
    units, correct = units + len(idx), correct + int(ok.sum())
    names, names_correct = names + 1, names_correct + int(ok.all())
  return dict(units=units, correct=correct, names=names, names_correct=names_correct)


def star_steps(ids, predictions, starts, ends, doc: bytes, prompt_len: int) -> tuple[bool, bool, int, int]:
  """Teacher-forced correctness of a star document's answer, node by node: (start node right, first decision
  right, later nodes right, later nodes). A node is right when every unit overlapping its bytes is; the first
  decision is the node after the start (the choice among `degree` arms), the later ones are edge lookups."""
  ids, predictions = np.asarray(ids), np.asarray(predictions)
  ok = np.zeros(len(ids), bool)
  ok[: len(predictions)] = ids[: len(predictions)] == predictions[: len(ids)]
  nodes, at = [], prompt_len
  for text in doc[prompt_len:].split(b","):
    nodes.append(bool(np.all(ok[(np.asarray(starts) < at + len(text)) & (np.asarray(ends) > at)])))
    at += len(text) + 1
  return nodes[0], len(nodes) > 1 and nodes[1], sum(nodes[2:]), len(nodes[2:])


def score_paths(continuations: list[bytes], docs: list[bytes], reverse: bool = False) -> dict[str, float]:
  """Exact-path accuracy of generated answers (the continuation must start with the answer path) and the
  rate of answers that are some valid start-to-leaf path (a wrong arm followed correctly counts there; with
  `reverse`, paths are written leaf first)."""
  exact = valid = 0
  for out, doc in zip(continuations, docs, strict=True):
    _, answer = synthetic.split_star(doc)
    exact += out[: len(answer)] == answer
    edges, start, _, path = synthetic.parse_star(doc)
    try:
      guess = [synthetic.star_node(x) for x in out[: len(answer)].decode("ascii").split(",")]
    except (UnicodeDecodeError, ValueError):
      continue
    valid += synthetic.is_path_to_leaf(guess[::-1] if reverse else guess, edges, start, len(path))
  n = max(len(docs), 1)
  return dict(accuracy=exact / n, valid_path_rate=valid / n)


# ---------------------------------------------------------------------------------------------------------
# Batched model calls on one device (probes are small; decoding is latency-bound).

def _chunks(indices: list[int], size: int):
  for i in range(0, len(indices), size):
    yield indices[i : i + size]


def greedy_continuations(run, params, prompts: list[bytes], max_new: int, batch_size: int = 64) -> list[bytes]:
  """Greedy continuation bytes of each prompt (after bos), up to eos or `max_new` units.

  Our decoder has no left padding, so prompts are batched by equal length; each batch is filled up to
  `batch_size` rows by repeating a row, so every batch of one length compiles once.
  """
  tok = run.tokenizer
  decoder = run.decode_model()  # with the run's heads: heads that take trunk layers change the trunk's shapes
  params = jax.device_put(params, jax.local_devices()[0])
  encoded = [np.concatenate([[tok.bos_id], tok.encode(p)]).astype(np.int32) for p in prompts]
  by_length: dict[int, list[int]] = {}
  for i, ids in enumerate(encoded):
    by_length.setdefault(len(ids), []).append(i)
  out: list[bytes] = [b""] * len(prompts)
  for length in sorted(by_length):
    group = by_length[length]
    rows = min(batch_size, len(group))
    for chunk in _chunks(group, rows):
      prompt_BxP = np.stack([encoded[i] for i in chunk] + [encoded[chunk[0]]] * (rows - len(chunk)))
      ids_BxN, lengths_B = generate(decoder, params, jnp.asarray(prompt_BxP), jax.random.PRNGKey(0),
                                    max_new=int(max_new), temperature=0.0, eos_id=tok.eos_id)
      ids_BxN, lengths_B = np.asarray(ids_BxN), np.asarray(lengths_B)
      for row, i in enumerate(chunk):
        ids = ids_BxN[row, : lengths_B[row]]
        out[i] = tok.decode_bytes(ids[ids != tok.eos_id])
  return out


def teacher_forced(run, params, docs: list[bytes], batch_size: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
  """(unit ids, argmax predictions) per document, teacher forced from bos: predictions[k] predicts ids[k].
  Documents longer than data.seq_len are scored on their first seq_len units, as training saw them."""
  tok = run.tokenizer
  model = run.model
  params = jax.device_put(params, jax.local_devices()[0])
  ids = [np.asarray(x, np.int32) for x in tok.encode_batch(docs)]
  kept = [min(len(x), run.config.data.seq_len) for x in ids]
  T = max(kept, default=1)
  inputs_NxT = np.full((len(docs), T), tok.pad_id, np.int32)
  segment_NxT = np.zeros((len(docs), T), np.int32)
  for i, (x, k) in enumerate(zip(ids, kept)):
    inputs_NxT[i, :k] = np.concatenate([[tok.bos_id], x[: k - 1]])
    segment_NxT[i, :k] = 1
  positions_T = np.arange(T, dtype=np.int32)

  @jax.jit
  def predict(params, inputs_BxT, segment_BxT):
    positions_BxT = jnp.broadcast_to(positions_T, inputs_BxT.shape)
    batch = dict(inputs=inputs_BxT, positions=positions_BxT, segment_ids=segment_BxT)
    return jnp.argmax(model.apply({"params": params}, batch).logits, axis=-1).astype(jnp.int32)

  B = min(batch_size, max(len(docs), 1))
  preds = []
  for lo in range(0, len(docs), B):
    inputs_BxT, segment_BxT = inputs_NxT[lo : lo + B], segment_NxT[lo : lo + B]
    short = B - len(inputs_BxT)
    if short:  # one shape, one compile
      inputs_BxT = np.concatenate([inputs_BxT, np.full((short, T), tok.pad_id, np.int32)])
      segment_BxT = np.concatenate([segment_BxT, np.zeros((short, T), np.int32)])
    preds.append(np.asarray(predict(params, jnp.asarray(inputs_BxT), jnp.asarray(segment_BxT)))[: B - short])
  preds_NxT = np.concatenate(preds) if preds else np.zeros((0, T), np.int32)
  return [(x, preds_NxT[i, :k]) for i, (x, k) in enumerate(zip(ids, kept))]


# ---------------------------------------------------------------------------------------------------------
# Options from the run's own data source.

def _options(run, generator: str, keys: tuple[str, ...], given: dict) -> tuple[dict, int, str]:
  """(probe options, held-out seed default, where the options came from) for `generator`."""
  found = synthetic.source_options(run.config.data.source, generator)
  base = found[0] if found else synthetic.GENERATORS[generator].defaults
  options = {k: int(given[k]) if given.get(k) is not None else base[k] for k in keys}
  seed = max((f["seed"] for f in found), default=-1) + 1
  return options, seed, ("data.source" if found else "defaults")


def star_graph_accuracy(run, params, n: int = 200, seed: int | None = None, degree: int | None = None,
                        path_len: int | None = None, num_nodes: int | None = None, batch_size: int = 64,
                        teacher_forced_too: bool = True) -> dict:
  """Exact-path accuracy of greedy generation on `n` held-out star graphs (and teacher forced, for contrast)."""
  options, default_seed, origin = _options(run, "star", ("degree", "path_len", "num_nodes", "letters", "reverse"),
                                           dict(degree=degree, path_len=path_len, num_nodes=num_nodes))
  seed = default_seed if seed is None else int(seed)
  # A run trained on one split (rl_star: split=pretrain) is probed on graphs of the test split, none of which
  # it saw in any edge order.
  trained = synthetic.source_options(run.config.data.source, "star")
  split = "test" if any(f["split"] != "all" for f in trained) else "all"
  docs = synthetic.star_graph_documents(n, seed=seed, split=split, **options)
  prompts, answers = zip(*map(synthetic.split_star, docs)) if docs else ((), ())
  tok = run.tokenizer
  longest = max((len(tok.encode(d)) + 1 for d in docs), default=0)
  if longest > run.config.data.seq_len:
    raise DataError(f"probe star: a document is {longest} units but the run's data.seq_len is "
                    f"{run.config.data.seq_len}; train with a longer seq_len or a smaller graph")
  max_new = max((len(a) for a in answers), default=0) + 1  # a unit is at least one byte; + eos
  continuations = greedy_continuations(run, params, list(prompts), max_new, batch_size)
  result = dict(probe="star", n=len(docs), seed=seed, chance=1.0 / options["degree"], options_from=origin,
                **options, **score_paths(continuations, docs, reverse=bool(options["reverse"])))
  if teacher_forced_too:
    exact = first = later = later_total = 0
    for doc, prompt, (ids, preds) in zip(docs, prompts, teacher_forced(run, params, docs, batch_size)):
      starts, ends = unit_spans(tok, ids, doc)
      answer = starts >= len(prompt)
      exact += bool(np.all(ids[answer] == preds[answer]))
      _, decision, right, total = star_steps(ids, preds, starts, ends, doc, len(prompt))
      first, later, later_total = first + decision, later + right, later_total + total
    # The "Clever Hans" signature: later steps (edge lookups) near 1 while the first decision is near 1/degree.
    result.update(teacher_forced_accuracy=exact / max(len(docs), 1),
                  teacher_forced_first_decision=first / max(len(docs), 1),
                  teacher_forced_later_steps=later / max(later_total, 1))
  result["examples"] = [dict(prompt=p.decode(), answer=a.decode(), generated=c.decode("utf-8", "replace"))
                        for p, a, c in list(zip(prompts, answers, continuations))[:3]]
  return result


def induction_accuracy(run, params, n: int = 200, seed: int | None = None, characters: int | None = None,
                       min_len: int | None = None, max_len: int | None = None, batch_size: int = 64) -> dict:
  """Teacher-forced accuracy on the units of a name after its first unit, at its second and later occurrences
  (`accuracy`, per unit; `name_accuracy`, whole names); first occurrences are scored the same way as a
  control that only priors can help."""
  options, default_seed, origin = _options(run, "induction", ("characters", "min_len", "max_len"),
                                           dict(characters=characters, min_len=min_len, max_len=max_len))
  seed = default_seed if seed is None else int(seed)
  examples = synthetic.induction_examples(n, seed=seed, **options)
  docs = [d for d, _ in examples]
  later = dict(units=0, correct=0, names=0, names_correct=0)
  first = dict(later)
  for (doc, names), (ids, preds) in zip(examples, teacher_forced(run, params, docs, batch_size)):
    starts, ends = unit_spans(run.tokenizer, ids, doc)
    spans = synthetic.name_spans(doc, names)
    for totals, is_later in ((later, True), (first, False)):
      counts = score_units(ids, preds, name_units(starts, ends, spans, later=is_later))
      for k, v in counts.items():
        totals[k] += v
  return dict(
      probe="induction", n=len(docs), seed=seed, options_from=origin, **options,
      accuracy=later["correct"] / max(later["units"], 1), units=later["units"],
      name_accuracy=later["names_correct"] / max(later["names"], 1), names=later["names"],
      first_occurrence_accuracy=first["correct"] / max(first["units"], 1),
      chance=1.0 / LETTERS if run.tokenizer.kind == "bytes" else None)


# ---------------------------------------------------------------------------------------------------------
# The registry `lm probe NAME` looks in.

@dataclasses.dataclass(frozen=True)
class Probe:
  fn: Callable[..., dict]
  generator: str                   # the synthetic generator whose options it reads from data.source
  options: tuple[str, ...]         # the options it reads
  n: int                           # default number of held-out documents


PROBES = {
    "star": Probe(star_graph_accuracy, "star", ("degree", "path_len", "num_nodes", "letters"), 200),
    "induction": Probe(induction_accuracy, "induction", ("characters", "min_len", "max_len"), 200),
}


def get(name: str) -> Probe:
  if name not in PROBES:
    raise ConfigError(f"unknown probe {name!r}; choose one of {', '.join(PROBES)}")
  return PROBES[name]


def run_probe(name: str, run, params, n: int | None = None, seed: int | None = None) -> dict:
  probe = get(name)
  n = probe.n if n is None else int(n)
  if n < 1:
    raise ConfigError(f"probe {name}: n={n} must be at least 1")
  return probe.fn(run, params, n=n, seed=seed)
