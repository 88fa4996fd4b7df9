"""Mesh sizing, errors before compile, and sharded training equal to one device (8 fake CPU devices)."""

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from lm import config as config_lib
from lm import families, parallel
from lm.errors import ConfigError


def test_mesh_shape_fills_the_free_axis():
  cfg = lambda d, f, t: ml_collections.ConfigDict(dict(data=d, fsdp=f, tensor=t))  # noqa: E731
  assert parallel.mesh_shape(cfg(-1, 1, 1), 8) == (8, 1, 1)
  assert parallel.mesh_shape(cfg(2, -1, 2), 8) == (2, 2, 2)
  assert parallel.mesh_shape(cfg(1, 2, 4), 8) == (1, 2, 4)
  with pytest.raises(ConfigError, match="has 6 devices but 8 devices are present"):
    parallel.mesh_shape(cfg(1, 2, 3), 8)
  with pytest.raises(ConfigError, match="does not divide the 8 devices present"):
    parallel.mesh_shape(cfg(-1, 3, 1), 8)
  with pytest.raises(ConfigError, match="at most one -1"):
    parallel.mesh_shape(cfg(-1, -1, 1), 8)


class _FakeMesh:
  def __init__(self, data, fsdp, tensor):
    self.shape = dict(data=data, fsdp=fsdp, tensor=tensor)


@pytest.mark.parametrize("mesh, overrides, message", [
    ((1, 1, 3), [], "model.num_heads=4 is not divisible by mesh.tensor=3"),
    ((1, 1, 8), ["model.num_heads=8"], "model.num_kv_heads=4 is not divisible by mesh.tensor=8"),
    ((1, 1, 4), ["model.d_ff=390"], "model.d_ff=390 is not divisible by mesh.tensor=4"),
    ((3, 1, 1), [], "data.batch_size=16 (per microbatch 16) is not divisible by mesh data x fsdp = 3"),
])
def test_divisibility_errors_name_the_numbers(mesh, overrides, message):
  config = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(config, overrides)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    parallel.check_divisibility(config, _FakeMesh(*mesh))


@pytest.fixture(scope="module")
def sharded_results():
  root = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(root / "tests" / "sharded_run.py"), "10"], capture_output=True,
                        text=True, env=env, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("family", ["hat", "concept"])
def test_chunked_families_on_mesh_2x2x2_match_one_device(sharded_results, family):
  base, got = sharded_results[f"{family}_1x1x1"]["losses"], sharded_results[f"{family}_2x2x2"]["losses"]
  assert len(base) == len(got) == 10
  for a, b in zip(got, base):
    assert abs(a - b) <= 1e-5 * abs(b), (got, base)


def test_an_objective_drawing_from_the_step_key_on_mesh_2x2x2_matches_one_device(sharded_results):
  """The token meshes train tests/test_train_rng.py's random-half objective (that the draw changes the loss is
  checked there): sharded runs and the resume onto one device draw what one device drew."""
  assert [o["name"] for o in sharded_results["objectives"]] == ["test_random_drop"]
  base, got = sharded_results["1x1x1"]["losses"], sharded_results["2x2x2"]["losses"]
  assert len(base) == len(got) == 10
  for a, b in zip(got, base):
    assert abs(a - b) <= 1e-5 * abs(b), (got, base)


def test_hierarchical_encoder_heads_must_divide_tensor():
  config = config_lib.load_experiment("byte_hat:tiny")
  config_lib.apply_overrides(config, ["model.encoder.num_heads=3", "model.encoder.d_model=48"])
  with pytest.raises(ConfigError, match=r"model.encoder.num_heads=3 is not divisible by mesh.tensor=2"):
    parallel.check_divisibility(config, _FakeMesh(1, 1, 2), families.get("hierarchical").tensor_split_fields(config))


def test_checkpoint_from_mesh_1x8x1_continues_on_one_device(sharded_results):
  resumed = sharded_results["resumed_on_1"]
  base = sharded_results["1x1x1"]["losses"][5:]
  assert resumed["devices"] == 1 and len(resumed["losses"]) == len(base) == 5
  for a, b in zip(resumed["losses"], base):
    assert abs(a - b) <= 1e-5 * abs(b), (resumed["losses"], base)


@pytest.mark.parametrize("mesh", ["1x8x1", "2x2x2", "1x2x4"])
def test_sharded_training_matches_one_device(sharded_results, mesh):
  base = sharded_results["1x1x1"]["losses"]
  got = sharded_results[mesh]["losses"]
  assert len(got) == len(base) == 10
  for a, b in zip(got, base):
    assert abs(a - b) <= 1e-5 * abs(b), (mesh, got, base)


def test_parameters_are_laid_out_by_the_rules(sharded_results):
  for mesh, result in sharded_results.items():
    if mesh in ("resumed_on_1", "objectives") or mesh.startswith(("hat_", "concept_")):
      continue
    specs = result["specs"]
    # [layers, embed, mlp] -> (None, fsdp, tensor); optimizer moments follow their parameters.
    assert specs["wi_0"] == [None, "fsdp", "tensor"] == specs["mu_wi_0"]
    assert specs["wo"] == [None, "tensor", "fsdp"]
    assert specs["query"] == [None, "fsdp", "tensor", None]
    assert specs["embed"] == ["tensor", "fsdp"]
  # tiny: 4 layers, d_model 128, d_ff 384; a shard holds 128/fsdp x 384/tensor of each layer's wi_0.
  expect = {"1x1x1": [4, 128, 384], "1x8x1": [4, 16, 384], "2x2x2": [4, 64, 192],
            "1x2x4": [4, 64, 96]}
  assert {m: r["shard_shape"] for m, r in sharded_results.items() if m in expect} == expect


@pytest.mark.parametrize("batch, accum, eval_batch, mesh, cores, want", [
    (12, 1, 0, {}, 2, 2), (12, 1, 0, {}, 8, 6), (12, 4, 0, {}, 8, 3), (12, 1, 8, {}, 8, 4), (7, 1, 0, {}, 2, 1),
    (12, 1, 0, {"tensor": 2}, 8, 1), (12, 1, 0, {"data": 2}, 8, 1), (12, 1, 0, {"cpu_devices": 3}, 2, 3),
    (64, 1, 0, {}, 8, 1),  # [64 * 64, 128] x [128, 2048] = 2.1 GFLOP: XLA:CPU splits it over cores itself
])
def test_cpu_device_count_divides_every_batch_of_a_data_mesh(batch, accum, eval_batch, mesh, cores, want):
  c = config_lib.base_config()
  c.data.batch_size, c.train.grad_accum, c.eval.batch_size = batch, accum, eval_batch
  c.data.seq_len, c.model.d_model, c.model.d_ff = 64, 128, 2048 if batch == 64 else 344
  c.mesh.update(mesh)
  assert parallel.cpu_device_count(c, cores) == want


_CPU_CORES = """
import json, sys, jax
from lm import config as config_lib, parallel
c = config_lib.base_config()
c.mesh.cpu_devices = 2
if sys.argv[1] == "backend-up":
  jax.devices()
print(json.dumps([parallel.use_cpu_cores(c), jax.device_count()]))
"""


@pytest.mark.parametrize("when, want", [("fresh", [2, 2]), ("backend-up", [None, 1])])
def test_use_cpu_cores_splits_a_fresh_backend_only(when, want):
  """A fresh process (as `lm train` is) gets the devices; one whose backend is up keeps its own."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-c", _CPU_CORES, when], capture_output=True, text=True, env=env,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == want
