"""Probes: scoring against hand-made cases, batching by prompt length, and one trained run end to end."""

import json
import pathlib

import numpy as np
import pytest

from lm import cli
from lm import config as config_lib
from lm.data import synthetic
from lm.data.tokenizers import ByteTokenizer, Tokenizer
from lm.errors import ConfigError, DataError
from lm.eval import probes

DOC = b"1>2,0>1,0>3,3>4|0>4=0,3,4"


def test_score_paths_by_hand():
  docs = [DOC] * 5
  outs = [b"0,3,4", b"0,3,4,9,9", b"0,1,2", b"0,3,2", b"\xff,x"]  # right, right + junk, wrong arm, broken, junk
  assert probes.score_paths(outs, docs) == dict(accuracy=0.4, valid_path_rate=0.6)
  assert synthetic.is_path_to_leaf([0, 1, 2], *synthetic.parse_star(DOC)[:2], 3)
  assert not synthetic.is_path_to_leaf([0, 1], *synthetic.parse_star(DOC)[:2], 2)  # 1 is not a leaf
  # The reversed-path control writes the answer goal first: the other arm's leaf back to 0 is valid, not exact.
  reverse = b"1>2,0>1,0>3,3>4|0>4=4,3,0"
  outs = [b"4,3,0", b"2,1,0", b"0,3,4"]
  assert probes.score_paths(outs, [reverse] * 3, reverse=True) == dict(accuracy=1 / 3, valid_path_rate=2 / 3)


class _PieceTokenizer(Tokenizer):
  """Greedy longest match over a fixed piece list: a stand-in for BPE with multi-byte units."""
  kind = "pieces"

  def __init__(self, pieces):
    self.pieces = [bytes([i]) for i in range(256)] + list(pieces)
    super().__init__(len(self.pieces) + 3, len(self.pieces), len(self.pieces) + 1, len(self.pieces) + 2)
    self._id_bytes = self.pieces + [b""] * 3

  def encode(self, data):
    ids, i = [], 0
    while i < len(data):
      best = max((j for j, p in enumerate(self.pieces) if data.startswith(p, i)), key=lambda j: len(self.pieces[j]))
      ids.append(best)
      i += len(self.pieces[best])
    return np.asarray(ids, np.int32)


def test_star_steps_split_the_first_decision_from_the_lookups():
  """Teacher-forced node-by-node scoring on one document (bytes, two- and three-byte units): a wrong first
  decision with right lookups is the Clever Hans pattern; a unit straddling two nodes counts against both."""
  doc = b"12>34,12>56,34>78,56>90|12>78=12,34,78"
  prompt_len = doc.index(b"=") + 1
  ids = np.frombuffer(doc, np.uint8).astype(np.int64)
  starts, ends = np.arange(len(doc)), np.arange(1, len(doc) + 1)
  preds = ids.copy()
  assert probes.star_steps(ids, preds, starts, ends, doc, prompt_len) == (True, True, 1, 1)
  preds[prompt_len + 4] = ord("5")  # "34" -> "35": the first decision goes wrong, the lookup stays right
  assert probes.star_steps(ids, preds, starts, ends, doc, prompt_len) == (True, False, 1, 1)
  preds = ids.copy()
  preds[-1] = ord("0")  # the last node
  assert probes.star_steps(ids, preds, starts, ends, doc, prompt_len) == (True, True, 0, 1)
  # Two-byte units from the answer's start: "12" ",3" "4," "78"; a wrong ",3" spoils the start node's
  # neighbour only where it overlaps: node "34".
  starts2 = np.concatenate([np.arange(prompt_len), prompt_len + np.arange(0, 8, 2)])
  ends2 = np.concatenate([np.arange(1, prompt_len + 1), prompt_len + np.arange(2, 10, 2)])
  ids2, preds2 = np.arange(len(starts2)), np.arange(len(starts2))
  preds2[prompt_len + 1] = -1
  assert probes.star_steps(ids2, preds2, starts2, ends2, doc, prompt_len) == (True, False, 1, 1)
  # Units "1" "2,3" "4,7" "8": a wrong "2,3" spoils the start node and the first decision alike.
  starts3 = np.concatenate([np.arange(prompt_len), prompt_len + np.array([0, 1, 4, 7])])
  ends3 = np.concatenate([np.arange(1, prompt_len + 1), prompt_len + np.array([1, 4, 7, 8])])
  ids3, preds3 = np.arange(len(starts3)), np.arange(len(starts3))
  preds3[prompt_len + 1] = -1
  assert probes.star_steps(ids3, preds3, starts3, ends3, doc, prompt_len) == (False, False, 1, 1)
  preds3 = ids3.copy()
  preds3[prompt_len + 2] = -1  # "4,7": the first decision and the lookup
  assert probes.star_steps(ids3, preds3, starts3, ends3, doc, prompt_len) == (True, False, 0, 1)


def test_name_units_bytes_and_multibyte_pieces():
  doc, names = b"Kal met Zorv. Zorv saw Kal.", ["Kal", "Zorv"]
  spans = synthetic.name_spans(doc, names)
  assert spans == [(0, 3, 0), (8, 12, 0), (14, 18, 1), (23, 26, 1)]
  tok = ByteTokenizer()
  ids = tok.encode(doc)
  starts, ends = probes.unit_spans(tok, ids, doc)
  later = probes.name_units(starts, ends, spans)
  assert [doc[g[0]:g[-1] + 1] for g in later] == [b"orv", b"al"]
  assert [doc[g[0]:g[-1] + 1] for g in probes.name_units(starts, ends, spans, later=False)] == [b"al", b"orv"]
  # " Zo" + "rv": only "rv" lies inside the name after its first byte; "Kal" as one piece leaves nothing.
  pieces = _PieceTokenizer([b" Zo", b"rv", b"Kal"])
  ids = pieces.encode(doc)
  starts, ends = probes.unit_spans(pieces, ids, doc)
  later = probes.name_units(starts, ends, spans)
  assert [[pieces.pieces[ids[i]] for i in g] for g in later] == [[b"rv"]]
  with pytest.raises(DataError, match="do not map onto"):
    probes.unit_spans(pieces, ids[:-1], doc)


def test_score_units_by_hand():
  targets = np.array([5, 6, 7, 8, 9, 10])
  preds = np.array([5, 6, 0, 8, 9])          # truncated: unit 5 was never predicted
  groups = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5])]
  assert probes.score_units(targets, preds, groups) == dict(units=6, correct=4, names=3, names_correct=1)


def test_unknown_probe_is_one_line(tmp_path, capsys):
  with pytest.raises(ConfigError, match="unknown probe 'stars'; choose one of star, induction"):
    probes.get("stars")
  assert cli.main(["probe", "stars", str(tmp_path)]) == 2
  assert capsys.readouterr().err.strip() == "error: unknown probe 'stars'; choose one of star, induction"
  assert cli.main(["probe", "star", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert "holds no checkpoint" in err and "\n" not in err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from lm.train import loop
  workdir = tmp_path_factory.mktemp("star")
  config = config_lib.load_experiment("probe_star:tiny")
  config_lib.apply_overrides(config, [
      "train.steps=3", "train.checkpoint_every=3", "train.log_every=3", "data.batch_size=4",
      "model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.num_kv_heads=2", "model.d_ff=64",
      "data.source=synthetic:star:degree=2:path_len=3:num_nodes=10:n=200:seed=5", "eval.max_batches=1"])
  summary = loop.train(config, str(workdir))
  return workdir, summary["run"], summary["state"].params


def test_star_probe_end_to_end(trained, capsys):
  workdir, run, params = trained
  assert cli.main(["probe", "star", str(workdir), "--n", "10"]) == 0
  out = capsys.readouterr().out.splitlines()
  result = json.loads((pathlib.Path(workdir) / "probe_star.json").read_text())
  assert out[0] == f"accuracy: {result['accuracy']:.4f}" and json.loads(out[1])["n"] == 10
  assert result["n"] == 10 and 0 <= result["accuracy"] <= 1 and 0 <= result["teacher_forced_accuracy"] <= 1
  assert 0 <= result["teacher_forced_first_decision"] <= 1 and 0 <= result["teacher_forced_later_steps"] <= 1
  # A whole path right teacher forced means its first decision and its lookups are right.
  assert result["teacher_forced_first_decision"] >= result["teacher_forced_accuracy"]
  assert result["chance"] == 0.5 and result["seed"] == 6 and result["options_from"] == "data.source"
  assert (result["degree"], result["path_len"], result["num_nodes"]) == (2, 3, 10)
  again = probes.star_graph_accuracy(run, params, n=10, teacher_forced_too=False)
  assert again["accuracy"] == result["accuracy"] and "teacher_forced_accuracy" not in again


def test_batched_greedy_equals_one_at_a_time_and_teacher_forcing(trained):
  _, run, params = trained
  docs = (synthetic.star_graph_documents(3, 2, 3, 10, seed=9) + synthetic.star_graph_documents(2, 2, 2, 10, seed=9))
  prompts = [synthetic.split_star(d)[0] for d in docs]  # two prompt lengths, one batch not full
  batched = probes.greedy_continuations(run, params, prompts, max_new=4, batch_size=2)
  single = [probes.greedy_continuations(run, params, [p], max_new=4)[0] for p in prompts]
  assert batched == single and all(batched)
  # Teacher forcing through the prompt predicts the same first answer unit as greedy decoding.
  for doc, prompt, out, (ids, preds) in zip(docs, prompts, batched, probes.teacher_forced(run, params, docs)):
    first = len(run.tokenizer.encode(prompt))
    assert run.tokenizer.decode_bytes(preds[first:first + 1]) == out[:1]


def test_induction_probe_on_any_run(trained):
  _, run, params = trained
  result = probes.run_probe("induction", run, params, n=6)
  assert result["options_from"] == "defaults" and result["n"] == 6 and result["seed"] == 0
  assert 0 <= result["accuracy"] <= 1 and result["units"] > 0 and result["names"] >= 6
  assert 0 <= result["first_occurrence_accuracy"] <= 1 and result["chance"] == pytest.approx(1 / 26)
