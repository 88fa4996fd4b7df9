"""Reward functions by name, their weighted sum, and the arithmetic prompt/answer source."""

import sys

import numpy as np
import pytest

from lm.data import synthetic
from lm.errors import ConfigError
from lm.rl import rewards

PROMPTS = ["12+7=", "30-4=", "2+2=", "5+5="]
COMPLETIONS = ["19", " 26\n", "5", "10 and more text"]
COLUMNS = dict(answer=["19", "26", "4", "10"], truncated=[False, False, False, True], lengths=[2, 4, 9, 12],
               max_new=12)


def test_builtin_rewards_by_example():
  assert rewards.get("exact_answer")(PROMPTS, COMPLETIONS, **COLUMNS) == [1, 1, 0, 0]
  assert rewards.get("numeric_answer")(PROMPTS, COMPLETIONS, **COLUMNS) == [1, 1, 0, 1]
  assert rewards.get("format")(PROMPTS, COMPLETIONS, **COLUMNS) == [1, 1, 1, 0]
  assert rewards.get(r"regex:\d+")(PROMPTS, COMPLETIONS, **COLUMNS) == [1, 1, 1, 0]
  # DAPO's soft overlong penalty with max_new 12 and a cache of 4: 0 up to 8 units, -1/4 per unit after.
  assert rewards.get("overlong:4")(PROMPTS, COMPLETIONS, **COLUMNS) == [0.0, 0.0, -0.25, -1.0]


def test_combined_rewards_are_weighted_sums_with_each_part(tmp_path, monkeypatch):
  (tmp_path / "my_rewards.py").write_text("def short(prompts, completions, **_):\n"
                                          "  return [float(len(c) < 3) for c in completions]\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  fn = rewards.combine([("exact_answer", 1.0), ("format", 0.5), ("my_rewards:short", -2.0)])
  total, parts = fn(PROMPTS, COMPLETIONS, **COLUMNS)
  np.testing.assert_allclose(total, [1 + 0.5 - 2, 1 + 0.5, 0.5 - 2, 0])
  assert set(parts) == {"exact_answer", "format", "my_rewards:short"}
  sys.modules.pop("my_rewards", None)


def test_a_registered_reward_is_found_by_its_dotted_name(tmp_path, monkeypatch):
  (tmp_path / "myrewards.py").write_text("from lm.rl import rewards\n\n"
                                         "@rewards.register('myrewards.brief')\n"
                                         "def brief(prompts, completions, **_):\n"
                                         "  return [float(len(c) <= 2) for c in completions]\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert rewards.get("myrewards.brief")(PROMPTS, COMPLETIONS, **COLUMNS) == [1, 0, 1, 0]
  with pytest.raises(ConfigError, match="must take"):
    rewards.register("myrewards.bad")(lambda x: x)
  sys.modules.pop("myrewards", None)


@pytest.mark.parametrize("spec, message", [
    ("exact", "unknown reward 'exact'"), ("regex:(", "not a regular expression"),
    ("overlong:x", "overlong:CACHE"), ("nosuch.module:fn", "cannot import fn from nosuch.module")])
def test_bad_reward_specs_fail_in_one_line(spec, message):
  with pytest.raises(ConfigError, match=message):
    rewards.combine([(spec, 1.0)])


def test_arith_documents_are_correct_and_split_into_prompt_and_answer():
  docs = synthetic.documents("synthetic:arith:n=200:digits=2:ops=3:seed=1")
  assert docs == synthetic.documents("synthetic:arith:n=200:digits=2:ops=3:seed=1") and len(set(docs)) > 150
  for doc in docs:
    prompt, answer = synthetic.prompt_answer(doc)
    assert prompt.endswith("=") and int(answer) == eval(prompt[:-1])  # noqa: S307  (digits and one operator)
    assert int(answer) >= 0
  with pytest.raises(Exception, match="ops=4"):
    synthetic.documents("synthetic:arith:ops=4")
