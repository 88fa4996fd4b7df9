"""Run by tests/test_parallel.py in a subprocess with 8 fake CPU devices (the device count is fixed when
jax starts, so it cannot be changed inside the pytest process). Prints one JSON line of results."""

import json
import os
import shutil
import sys
import tempfile

import jax
import numpy as np

from lm import config as config_lib
from lm.train import loop

import test_train_rng  # noqa: F401  (registers test_random_drop, an objective that draws from LossContext.rng)

# Pure data parallelism (8, 1, 1) is left out for time: (2, 2, 2) splits the batch too, and
# tests/test_launch.py trains data-parallel across two processes.
MESHES = [(1, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]
# The token runs train an objective that draws from the step's key (tests/test_train_rng.py's: next-unit loss on
# a random half of the positions), so every mesh, and the resume onto one device, must draw what one device drew.
OBJECTIVES = [dict(name="test_random_drop", weight=1.0)]


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def small_corpus() -> str:
  """~120 KB of sentences in 80 files: sharded == unsharded holds on any text, and loading this is fast."""
  d = tempfile.mkdtemp()
  rng = np.random.default_rng(0)
  words = "the a river stone light quiet seven paper north glass among under over with".split()
  for i in range(80):
    sentences = [" ".join(rng.choice(words, rng.integers(4, 12))).capitalize() + "." for _ in range(30)]
    with open(os.path.join(d, f"doc{i:02d}.txt"), "w") as f:
      f.write(" ".join(sentences) + "\n")
  return d


def main(steps: int):
  out = {}
  corpus = small_corpus()
  for shape in MESHES:
    config = config_lib.load_experiment("token_ntp:tiny")
    config_lib.apply_overrides(config, [f"data.source={corpus}",
        f"train.steps={steps}", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0",
        "eval.max_batches=1", "sample.max_new=0", "model.num_kv_heads=4",
        f"mesh.data={shape[0]}", f"mesh.fsdp={shape[1]}", f"mesh.tensor={shape[2]}"])
    config.objectives = OBJECTIVES
    n = int(np.prod(shape))
    workdir = tempfile.mkdtemp()
    summary = loop.train(config, workdir, devices=jax.devices()[:n])
    params = summary["state"].params
    layers = params["decoder"]["layers"]
    specs = {
        "embed": params["embed"]["embedding"].sharding.spec,
        "query": layers["attn"]["query"].sharding.spec,
        "wi_0": layers["mlp"]["wi_0"]["kernel"].sharding.spec,
        "wo": layers["mlp"]["wo"]["kernel"].sharding.spec,
        "mu_wi_0": summary["state"].opt_state[1][0].mu["decoder"]["layers"]["mlp"]["wi_0"]["kernel"].sharding.spec,
    }
    out["x".join(map(str, shape))] = dict(
        losses=losses(workdir), specs={k: [list(a) if isinstance(a, tuple) else a for a in v]
                                       for k, v in specs.items()},
        shard_shape=list(layers["mlp"]["wi_0"]["kernel"].addressable_shards[0].data.shape))
  # The chunked families shard by the same rules: (2,2,2) against one device. The concept run trains every
  # concept objective, so the in-batch contrastive term is computed across devices too.
  for name, experiment in (("hat", "byte_hat:tiny"), ("concept", "concept_lcm:tiny")):
    for shape in [(1, 1, 1), (2, 2, 2)]:
      config = config_lib.load_experiment(experiment)
      config_lib.apply_overrides(config, [f"data.source={corpus}",
          f"train.steps={steps}", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0",
          "eval.max_batches=1", "data.num_chunks=8", "data.chunk_len=8", "sample.max_new=0",
          f"mesh.data={shape[0]}", f"mesh.fsdp={shape[1]}", f"mesh.tensor={shape[2]}"])
      if name == "concept":
        config.objectives = [*config.objectives, dict(name="concept_recon", weight=0.5),
                             dict(name="concept_contrastive", weight=0.5)]
      workdir = tempfile.mkdtemp()
      loop.train(config, workdir, devices=jax.devices()[:int(np.prod(shape))])
      out[name + "_" + "x".join(map(str, shape))] = dict(losses=losses(workdir))

  # A checkpoint saved on mesh (1,8,1) restores on 1 device and continues: save at steps/2 and steps, drop
  # the last one, resume on a one-device mesh.
  half = steps // 2
  config = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(config, [
      f"data.source={corpus}", f"train.steps={steps}", "train.log_every=1", "train.eval_every=0",
      f"train.checkpoint_every={half}",
      "eval.max_batches=1", "sample.max_new=0", "model.num_kv_heads=4", "mesh.data=1", "mesh.fsdp=8",
      "mesh.tensor=1"])
  config.objectives = OBJECTIVES
  workdir = tempfile.mkdtemp()
  loop.train(config, workdir, devices=jax.devices())
  shutil.rmtree(os.path.join(workdir, "checkpoints", str(steps)))
  config_lib.apply_overrides(config, ["mesh.fsdp=1"])
  summary = loop.train(config, workdir, devices=jax.devices()[:1])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    by_step = {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}
  out["resumed_on_1"] = dict(losses=[by_step[s] for s in range(half + 1, steps + 1)],
                             devices=len(summary["state"].params["embed"]["embedding"].sharding.device_set))
  out["objectives"] = OBJECTIVES
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
