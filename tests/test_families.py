"""The family registry (`lm/families/__init__.py`): families found by module name, forked by copying one file,
and objectives with heads registered from a user module."""

import json
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

import lm
from lm import families
from lm.errors import ConfigError

from conftest import same_losses
from lm.train import checkpoint, loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAST = ["train.steps=6", "train.checkpoint_every=3", "train.log_every=1", "train.eval_every=0", "eval.max_batches=1",
        "model.d_model=32", "model.num_layers=2", "model.d_ff=64", "data.batch_size=4", "data.seq_len=32"]


def test_builtin_families_by_name():
  for name in families.BUILTIN:
    family = families.get(name)
    assert isinstance(family, families.Family)
    assert family is families.get(f"lm.families.{name}")


def test_unknown_family_is_one_line():
  with pytest.raises(ConfigError, match=r"model.family=.nope. is unknown: no module .lm.families.nope. or .nope."):
    families.get("nope")
  with pytest.raises(ConfigError, match="defines no FAMILY"):
    families.get("lm.models.layers")


def test_family_section_comes_with_the_family():
  assert "encoder" not in families.base_config("token").model
  config = families.base_config("hierarchical")
  assert config.model.encoder.d_model == 64 and config.data.chunk_len == 16
  # A family override brings its fields before the other overrides are applied.
  config = families.load_config("token_ntp:tiny", ["model.family=concept", "model.encoder.d_model=32"])
  assert config.model.encoder.d_model == 32 and config.data.concept_embeddings == ""
  with pytest.raises(ConfigError, match="unknown config key config.model.encodr.d_model; did you mean"):
    families.load_config("token_ntp:tiny", ["model.encodr.d_model=32"])


@pytest.mark.parametrize("experiment", ["byte_hat:tiny", "concept_lcm:tiny"])
def test_completion_only_loss_is_the_token_familys(experiment):
  with pytest.raises(ConfigError, match=r"data.completion_after='=' is read by the token family only"):
    families.load_config(experiment, ["data.completion_after=="])


def test_no_module_outside_families_asks_which_family_it_is():
  out = subprocess.run(["grep", "-rnE", r"family *(==|!=|in) ", "lm/", "--include=*.py"], cwd=ROOT,
                       capture_output=True, text=True).stdout
  assert [line for line in out.splitlines() if not line.startswith("lm/families/")] == []


def _metrics(workdir) -> list[dict]:
  return [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_forked_family_trains_evaluates_resumes_and_samples(tmp_path, monkeypatch, first_losses):
  """A copy of the lm/families/token/ folder under another name, outside the package, is a family of its own,
  with no other edit."""
  shutil.copytree(ROOT / "lm/families/token", tmp_path / "myfamily", ignore=shutil.ignore_patterns("__pycache__"))
  monkeypatch.syspath_prepend(str(tmp_path))
  fork = families.load_config("token_ntp:tiny", FAST + ["model.family=myfamily"])
  assert families.get("myfamily") is not families.get("token")
  # The copy is the same code under another name: its first 20 losses on token_ntp:tiny are the recorded ones
  # (bit for bit; tests/data/first_losses.json), which checks lm/families/token/ itself too.
  want = json.loads((ROOT / "tests/data/first_losses.json").read_text())["token_ntp:tiny"]
  got = first_losses(families.load_config("token_ntp:tiny", ["model.family=myfamily"]), 20)
  assert same_losses(got, want), (got, want)
  w = tmp_path / "fork"
  loop.train(fork, str(w))
  assert checkpoint.latest_step(w) == 6 and len([r for r in _metrics(w) if "loss" in r]) == 6
  r = lm.load(str(w))
  assert r.config.model.family == "myfamily" and type(r.model).__module__ == "myfamily.family"
  assert 0 < r.evaluate()["bpb"] < 8.5  # a few steps below the uniform 8 bits plus specials
  assert isinstance(r.sample("The ", max_new=8, temperature=0.0), str)
  resumed = loop.train(families.load_config("token_ntp:tiny", FAST + ["model.family=myfamily", "train.steps=8"]),
                       str(w))
  assert resumed["step"] == 8 and checkpoint.latest_step(w) == 8
  assert [rec["step"] for rec in _metrics(w) if "loss" in rec] == list(range(1, 9))


USER_OBJECTIVE = '''
import flax.linen as nn
import jax.numpy as jnp

from lm import objectives


class ScaledHead(nn.Module):
  """A head of one square projection before the shared unembedding, logits scaled by `scale`."""
  cfg: object
  decode: bool = False
  scale: float = 1.0

  @nn.compact
  def __call__(self, trunk):
    h = nn.Dense(trunk.h_BxTxD.shape[-1], use_bias=False, name="proj")(trunk.h_BxTxD)
    return {"scaled_logits": trunk.unembed(h) * self.scale}


@objectives.register("mypkg.myloss", head=lambda scale=1.0: objectives.Head("scaled", ScaledHead, (("scale", scale),)))
def myloss(scale: float = 1.0):
  def loss(outputs, batch, ctx):
    mask = batch["loss_mask"]
    nll, correct, count = objectives.masked_nll(outputs.logits, batch["targets"], mask)
    head_nll, _, _ = objectives.masked_nll(outputs.aux["scaled_logits"], batch["targets"], mask)
    n_bytes = jnp.sum(ctx.unit_bytes[batch["targets"]] * mask)
    return objectives.LossTerms(total=nll + head_nll, count=count,
                                metrics=dict(nll_sum=nll, accuracy_sum=correct, n_bytes=n_bytes))
  return loss
'''


@pytest.mark.slow
def test_user_objective_with_a_head_from_its_own_module(tmp_path, monkeypatch):
  (tmp_path / "mypkg.py").write_text(textwrap.dedent(USER_OBJECTIVE))
  monkeypatch.syspath_prepend(str(tmp_path))
  w = tmp_path / "w"
  cmd = [sys.executable, "-m", "lm", "train", "token_ntp:tiny", "--workdir", str(w),
         "--config.objectives.0.name=mypkg.myloss", "--config.sample.max_new=4"] + [f"--config.{o}" for o in FAST]
  env = dict(__import__("os").environ, PYTHONPATH=f"{tmp_path}:{ROOT}")
  out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "bpb:" in out.stdout and "sample:" in out.stdout
  with pytest.raises(ConfigError, match=r"objectives.0.name='mypkg.myloss'"):
    lm.load(str(w))  # a workdir naming a module outside lm imports it only when asked to
  r = lm.load(str(w), trust_code=True)
  assert "scaled_head" in r.params and r.params["scaled_head"]["proj"]["kernel"].shape == (32, 32)
  record = _metrics(w)[0]
  assert "mypkg.myloss/bpb" in record
  # The head's FLOPs come from its parameters (2 per weight) when its module gives no formula.
  plain = lm.build("token_ntp:tiny", **{o.split("=")[0]: json.loads(o.split("=")[1]) for o in FAST})
  n_bytes = sum(nb for _, nb in plain.data.eval_batches("val", 4, max_batches=1))
  rows = [b for b, _ in plain.data.eval_batches("val", 4, max_batches=1)]
  # executed: every position of the rows; data: the positions of a segment
  for key, units in (("flops_per_byte_train", sum(float(b["segment_ids"].size) for b in rows)),
                     ("flops_per_byte_data", sum(float((b["segment_ids"] > 0).sum()) for b in rows))):
    extra = r.run.flops_per_byte(n_bytes, rows)[key] - plain.run.flops_per_byte(n_bytes, rows)[key]
    assert extra == pytest.approx(3 * 2 * 32 * 32 * units / n_bytes), key
  # Evaluated and resumed like any other run.
  assert r.evaluate()["bpb"] > 0
  config = families.load_config("token_ntp:tiny", FAST + ["objectives.0.name=mypkg.myloss", "train.steps=8"])
  assert loop.train(config, str(w))["step"] == 8 and checkpoint.latest_step(w) == 8
