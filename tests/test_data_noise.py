"""Noised held-out text: each kind does what it says at the asked rate, and bad specs are one line."""

import numpy as np
import pytest

from lm.data import noise
from lm.errors import DataError

TEXT = (b"the quick brown fox jumps over the lazy dog. " * 200)


def test_rate_zero_is_identity_and_kinds_do_what_they_say():
  rng = np.random.default_rng(0)
  for kind in noise.KINDS:
    assert noise.apply(TEXT, kind, 0.0, rng) == TEXT
  deleted = noise.apply(TEXT, "delete", 0.1, np.random.default_rng(1))
  assert 0.85 * len(TEXT) < len(deleted) < 0.95 * len(TEXT)
  upper = noise.apply(TEXT, "upper", 0.2, np.random.default_rng(2))
  assert upper.lower() == TEXT and 0.1 < sum(c.isupper() for c in upper.decode()) / len(TEXT.replace(b" ", b"")) < 0.3
  swapped = noise.apply(TEXT, "swap", 0.1, np.random.default_rng(3))
  assert sorted(swapped) == sorted(TEXT) and swapped != TEXT and len(swapped) == len(TEXT)


def test_noised_is_deterministic_and_keeps_non_utf8():
  docs = [TEXT[:100], b"\xff\xfe" * 20]
  assert noise.noised(docs, "swap:0.3", seed=5) == noise.noised(docs, "swap:0.3", seed=5)
  assert sorted(noise.noised(docs, "swap:0.3")[1]) == sorted(docs[1])


@pytest.mark.parametrize("spec", ["shuffle:0.1", "delete", "delete:2", "upper:x"])
def test_bad_specs_are_one_line(spec):
  with pytest.raises(DataError, match="expected KIND:RATE with KIND one of delete, swap, upper"):
    noise.parse(spec)
