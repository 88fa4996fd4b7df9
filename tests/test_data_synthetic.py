"""Synthetic corpora: star graphs are valid stars with the right answer, stories repeat their names, source specs."""

import re

import numpy as np
import pytest

from lm import config as config_lib
from lm.data import corpus, synthetic
from lm.data.pipeline import TokenData
from lm.errors import DataError


def _star_check(doc: bytes, degree: int, path_len: int, num_nodes: int):
  """Slow reference: rebuild the graph from the edge list and walk back from the goal."""
  edges, start, goal, path = synthetic.parse_star(doc)
  nodes = {u for e in edges for u in e}
  assert len(edges) == degree * path_len and len(nodes) == degree * path_len + 1
  assert all(0 <= u < num_nodes for u in nodes)
  parent = {}
  for u, v in edges:
    assert v not in parent  # every node but the center has one parent: a tree
    parent[v] = u
  (center,) = nodes - set(parent)
  assert start == center and sum(u == center for u, _ in edges) == degree
  leaves = nodes - {u for u, _ in edges}
  assert len(leaves) == degree and goal in leaves
  walk = [goal]
  while walk[-1] != center:
    walk.append(parent[walk[-1]])
  assert path == walk[::-1] and len(path) == path_len + 1


@pytest.mark.parametrize("degree,path_len,num_nodes", [(2, 5, 50), (3, 2, 10), (5, 4, 100), (1, 1, 2)])
def test_star_graphs_are_stars_with_the_right_answer(degree, path_len, num_nodes):
  docs = synthetic.star_graph_documents(100, degree, path_len, num_nodes, seed=3)
  width = len(str(num_nodes - 1))
  for doc in docs:
    _star_check(doc, degree, path_len, num_nodes)
    assert re.fullmatch(rb"(\d{%d}>\d{%d},)*\d{%d}>\d{%d}\|\d{%d}>\d{%d}=(\d{%d},)*\d{%d}" % ((width,) * 8), doc)
    prompt, answer = synthetic.split_star(doc)
    assert prompt + answer == doc and prompt.endswith(b"=") and b"=" not in answer
  assert len({len(d) for d in docs}) == 1  # fixed-width labels: one prompt length per configuration
  goals = [synthetic.parse_star(d)[2] for d in docs]
  arms = [synthetic.parse_star(d)[3][1] for d in docs]
  assert len(set(arms)) > 1 and len(set(goals)) > 1


def test_reversed_star_paths_are_the_same_graphs_goal_first():
  forward = synthetic.star_graph_documents(50, 2, 3, 10, seed=4)
  backward = synthetic.documents("synthetic:star:degree=2:path_len=3:num_nodes=10:seed=4:n=50:reverse=1")
  for f, b in zip(forward, backward, strict=True):
    (fp, fa), (bp, ba) = synthetic.split_star(f), synthetic.split_star(b)
    assert fp == bp and ba.split(b",") == fa.split(b",")[::-1]
    assert synthetic.problem_key(fp.decode()) == synthetic.problem_key(bp.decode())
  with pytest.raises(DataError, match="reverse=2: 0 .* or 1"):
    synthetic.documents("synthetic:star:reverse=2")


@pytest.mark.parametrize("degree,path_len,num_nodes", [(2, 5, 50), (3, 4, 62)])
def test_star_graphs_with_one_letter_per_node(degree, path_len, num_nodes):
  docs = synthetic.star_graph_documents(100, degree, path_len, num_nodes, seed=3, letters=1)
  for doc in docs:
    _star_check(doc, degree, path_len, num_nodes)  # parse_star reads the letters back to the same nodes
    assert re.fullmatch(rb"(\w>\w,)*\w>\w\|\w>\w=(\w,)*\w", doc)
  assert len({len(d) for d in docs}) == 1
  assert any(re.search(rb"[A-Za-z]", d) for d in docs)
  # Digit labels are the same characters either way: a 10-node graph reads the same with letters=0 or 1.
  assert synthetic.star_graph_documents(20, 2, 3, 10, letters=1) == synthetic.star_graph_documents(20, 2, 3, 10)
  with pytest.raises(DataError, match="letters=1 with num_nodes=63: .* allows at most 62 nodes"):
    synthetic.documents("synthetic:star:num_nodes=63:letters=1")


def test_star_answer_arm_is_uniform_over_edge_order():
  # The answer arm must not be guessable from where its first edge sits in the shuffled list.
  firsts = []
  for doc in synthetic.star_graph_documents(2000, degree=2, path_len=3, num_nodes=10, seed=0):
    edges, start, _, path = synthetic.parse_star(doc)
    center_edges = [v for u, v in edges if u == start]
    firsts.append(center_edges.index(path[1]))
  assert 0.45 < np.mean(firsts) < 0.55


def test_generators_are_deterministic_and_prefix_stable():
  a = synthetic.star_graph_documents(50, seed=7)
  assert a == synthetic.star_graph_documents(50, seed=7)
  assert a[:20] == synthetic.star_graph_documents(20, seed=7)
  assert len(set(a) & set(synthetic.star_graph_documents(50, seed=8))) == 0
  s = synthetic.induction_examples(30, seed=7)
  assert s == synthetic.induction_examples(30, seed=7) and s[:5] == synthetic.induction_examples(5, seed=7)
  assert [d for d, _ in s] == synthetic.induction_documents(30, seed=7)
  assert not set(synthetic.induction_documents(30, seed=8)) & {d for d, _ in s}


@pytest.mark.parametrize("characters", [1, 2, 4])
def test_stories_repeat_every_name_and_spans_find_them(characters):
  for doc, names in synthetic.induction_examples(100, seed=1, characters=characters, min_len=3, max_len=6):
    assert len(names) == characters and len({n[0] for n in names}) == characters
    assert all(re.fullmatch(r"[A-Z][a-z]{2,5}", n) for n in names)
    spans = synthetic.name_spans(doc, names)
    for name in names:
      mine = [s for s in spans if doc[s[0]:s[1]] == name.encode()]
      assert len(mine) >= 2 and [o for _, _, o in mine] == list(range(len(mine)))
    assert all(not doc[e:e + 1].isalpha() and not doc[s - 1:s].isalpha() for s, e, _ in spans)
    assert sum(len(re.findall(rf"\b{n}\b", doc.decode())) for n in names) == len(spans)


def test_name_spans_by_hand():
  doc = b"Zo met Zorvik. Zorvik, Zo and Zorviks."
  assert synthetic.name_spans(doc, ["Zorvik", "Zo"]) == [(0, 2, 0), (7, 13, 0), (15, 21, 1), (23, 25, 1)]


def test_source_spec_defaults_and_options():
  assert synthetic.parse_source("synthetic:star") == ("star", synthetic.GENERATORS["star"].defaults)
  name, options = synthetic.parse_source("synthetic:star:degree=3:path_len=4:")
  assert name == "star" and options == dict(synthetic.GENERATORS["star"].defaults, degree=3, path_len=4)
  docs = corpus.load_documents("synthetic:star:degree=3:path_len=2:num_nodes=10:n=40:seed=1, synthetic:induction:n=7")
  assert len(docs) == 47 and docs[:40] == synthetic.star_graph_documents(40, 3, 2, 10, seed=1)
  assert synthetic.source_options("python-prose,synthetic:induction:seed=4", "induction")[0]["seed"] == 4
  assert synthetic.source_options("synthetic:star", "induction") == []


@pytest.mark.parametrize("spec", ["synthetic:arith:n=400:seed=5", "synthetic:star:degree=2:path_len=2:num_nodes=10:n=400"])
def test_a_split_keeps_the_draws_whose_problem_it_holds(spec):
  """split=NAME is the split=all stream less other splits' problems (dev and test less repeats); every problem
  has one split, whatever its operand or edge order."""
  stream = synthetic.documents(spec)
  split_of = {d: synthetic.split_of(synthetic.prompt_answer(d)[0]) for d in stream}
  assert set(split_of.values()) == set(synthetic.SPLITS)
  for split in ("pretrain", "rl"):
    mine = [d for d in stream if split_of[d] == split]
    assert synthetic.documents(f"{spec.replace(':n=400', f':n={len(mine)}')}:split={split}") == mine
  assert synthetic.problem_key("12+34=") == synthetic.problem_key("34+12=") != synthetic.problem_key("34-12=")
  assert synthetic.problem_key("1>2,0>1|0>2=") == synthetic.problem_key("0>1,1>2|0>2=")


def test_source_spec_survives_a_command_line_override():
  config = config_lib.load_experiment("probe_star:tiny")
  config_lib.apply_overrides(config, ["data.source=synthetic:star:degree=3:path_len=2"])
  assert synthetic.parse_source(config.data.source)[1]["degree"] == 3


@pytest.mark.parametrize("spec,needle", [
    ("synthetic:stars", "unknown synthetic generator 'stars'; choose one of star, induction"),
    ("synthetic:", "choose one of star, induction"),
    ("synthetic:star:depth=3", "unknown option 'depth'; synthetic:star takes degree, path_len, num_nodes, n, seed"),
    ("synthetic:star:degree", "option 'degree' is not KEY=VALUE"),
    ("synthetic:star:degree=two", "degree='two' is not an integer"),
    ("synthetic:star:degree=5:path_len=10:num_nodes=20", "fewer than the 51 nodes"),
    ("synthetic:induction:characters=2:min_len=1", "min_len"),
    ("synthetic:induction:n=0", "n=0 must be >= 1"),
    ("synthetic:arith:split=val", "split='val'; choose all, pretrain, rl, dev, test"),
    ("synthetic:induction:split=dev", "unknown option 'split'"),
    ("synthetic:arith:digits=1:ops=1:n=40:split=test", "split=test holds fewer than n=40 distinct problems"),
])
def test_bad_source_specs_fail_in_one_line(spec, needle):
  with pytest.raises(DataError) as e:
    corpus.load_documents(spec)
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_documents_pass_through_the_token_pipeline():
  data = TokenData.build("synthetic:star:degree=2:path_len=3:num_nodes=10:n=300", seq_len=36, val_fraction=0.1)
  rows = data.train_rows
  assert rows["inputs"].shape[1] == 36 and len(data.splits["val"]) > 0
  # Each row holds exactly one whole graph: bos, its 35 bytes, eos.
  assert np.all(rows["segment_ids"][:-1] == 1) and np.all(rows["inputs"][:, 0] == data.tokenizer.bos_id)
  assert bytes(rows["inputs"][0, 1:].astype(np.uint8)) in data.splits["train"]
  batch, n_bytes = data.eval_batches("val", 4)[0]
  assert batch["inputs"].shape == (4, 36) and n_bytes > 0
  stories = TokenData.build("synthetic:induction:n=50", seq_len=128)
  assert int(stories.train_rows["loss_mask"].sum()) == sum(len(d) + 1 for d in stories.splits["train"])
