import os
import tempfile

# One corpus/tokenizer cache per test session, inherited by CLI subprocesses; never the user's own cache.
os.environ.setdefault("LM_CACHE_DIR", tempfile.mkdtemp(prefix="lm-test-cache-"))
# And one XLA compilation cache: many tests (and their subprocesses) compile the same tiny programs; a hit
# returns the executable the first compile produced, so values are unchanged.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ["LM_CACHE_DIR"], "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# CPU only: with libtpu installed (the [tpu] extra, for `lm compile`), jax would otherwise spend a second of
# every process probing for TPU chips; subprocesses inherit it.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# In-process tests run on one XLA:CPU device whatever the cores (an in-process `lm train` would otherwise
# split them, `parallel.use_cpu_cores`, and tests would depend on their order); CLI subprocesses do split.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  jax.config.update("jax_num_cpu_devices", 1)

import pathlib  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402

PRE_FAMILIES = pathlib.Path(__file__).parent / "data" / "pre_families"


@pytest.fixture
def old_run(tmp_path):
  """`old_run(name)`: a writable copy of a tiny run the code before `lm/families/` wrote (token_mtp, byte_hat,
  concept_lcm); `tests/data/pre_families/expected_bpb.json` has the bpb that code evaluated it to."""
  def copy(name: str) -> pathlib.Path:
    target = tmp_path / "runs" / name
    shutil.copytree(PRE_FAMILIES / name, target)
    return target
  return copy


@pytest.fixture
def first_losses():
  """`first_losses(config, steps)`: the first training losses of `config` (float32 values in hex), from the
  training loop's own step function, data order and init."""
  import numpy as np
  from lm import parallel
  from lm.train import loop, run as run_lib

  def losses(config, steps: int) -> list[str]:
    data = run_lib.load_data(config)
    run = run_lib.build_run(config, data.tokenizer)
    step_fn, extra = loop.train_step(run, data)
    state, batches = run.init(config.train.seed), data.train_iterator(config.data.batch_size, config.train.seed)
    out = []
    with parallel.activation_context(run.mesh):
      for _ in range(steps):
        state, metrics = step_fn(state, run.put_batch(next(batches)), *extra)
        out.append(float(np.float32(metrics["loss"])).hex())
    return out
  return losses


def same_losses(got: list[str], want: list[str]) -> bool:
  """Recorded losses (float32 in hex) against new ones: bit for bit on the CPU that recorded them, but XLA's
  float32 kernels differ in the last bits between CPU models (Intel AVX-512 vs AMD EPYC: 2 ulp by step 11), so
  equal to 1e-5 relative. A behaviour change (data order, init, a formula) moves the first loss by ~1e-2."""
  import math
  return len(got) == len(want) and all(
      math.isclose(float.fromhex(a), float.fromhex(b), rel_tol=1e-5) for a, b in zip(got, want))


@pytest.fixture(scope="session")
def tiny_token_model():
  """`tiny_token_model(V, seed)`: (model, decode_model, params, next_log_probs) of a one-layer token model over
  V ids with peaked random weights (params x 4, so distributions are far from uniform and ties improbable);
  `next_log_probs(prefixes)` is float64 [n, V] after the context [0]. For exact enumeration tests."""
  import flax.linen as nn
  import jax.numpy as jnp
  import numpy as np
  from lm import config as config_lib, families
  from lm.decoding import steps
  made = {}

  def make(V: int = 3, seed: int = 0):
    if (V, seed) not in made:
      c = config_lib.resolve_backend_defaults(families.load_config("token_ntp:tiny", {
          "model.d_model": 32, "model.num_layers": 1, "model.num_heads": 2, "model.num_kv_heads": 2,
          "model.d_ff": 64}), "cpu")
      family = families.get("token")
      model, decode_model = family.build_model(c, V), family.build_model(c, V, decode=True)
      params = nn.unbox(model.init(jax.random.PRNGKey(seed), {"inputs": jnp.zeros((1, 8), jnp.int32)},
                                   with_heads=False))["params"]
      params = jax.tree.map(lambda x: x * 4.0, params)
      made[V, seed] = (model, decode_model, params, steps.next_log_probs_fn(model, params, np.array([0])))
    return made[V, seed]
  return make
