"""The fused attention kernels (Pallas interpret mode on CPU) against the XLA reference: forward and gradient,
packed segments with padding, GQA, causal and not, and sharded over a mesh as the model runs them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.models import kernels, layers


def _inputs(B=2, T=256, H=4, K=2, E=32, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(B, T, n, E)), jnp.float32) for n in (H, K, K))
  seg = np.ones((B, T), np.int32)
  pos = np.tile(np.arange(T, dtype=np.int32), (B, 1))
  seg[0, 90:] = 2                     # two documents, the second starting mid-block
  pos[0, 90:] -= 90
  seg[0, 200:] = 3
  pos[0, 200:] -= 200
  seg[1, 150:] = 0                    # padding at the end of the second row
  pos[1, 150:] = 0
  return q, k, v, jnp.asarray(seg), jnp.asarray(pos)


def _reference(q, k, v, seg, pos, causal):
  return layers.dot_product_attention(q, k, v, layers.attention_mask(seg, seg, pos, pos, causal))


def _fused(kind, causal, block=128):
  return lambda q, k, v, seg: kernels.fused_attention(kind, q, k, v, seg, seg, causal, block, block, interpret=True)


def _grads(f, args, w):
  return jax.grad(lambda *a: jnp.sum(f(*a) * w), argnums=(0, 1, 2))(*args)


@pytest.mark.parametrize("kind,causal,K", [("splash", True, 2), ("splash", False, 4), ("splash", True, 1),
                                           ("pallas_gpu", True, 2), ("pallas_gpu", False, 4)])
def test_fused_kernel_equals_xla_reference_forward_and_gradient(kind, causal, K):
  q, k, v, seg, pos = _inputs(K=K)
  want = _reference(q, k, v, seg, pos, causal)
  got = jax.jit(_fused(kind, causal))(q, k, v, seg)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)
  w = jax.random.normal(jax.random.PRNGKey(1), want.shape)
  g_want = _grads(lambda q, k, v: _reference(q, k, v, seg, pos, causal), (q, k, v), w)
  g_got = jax.jit(lambda q, k, v: _grads(lambda *a: _fused(kind, causal)(*a, seg), (q, k, v), w))(q, k, v)
  for name, a, b in zip("qkv", g_got, g_want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4, err_msg=f"d{name}")


def test_splash_blocks_smaller_than_the_sequence():
  q, k, v, seg, pos = _inputs(T=384)
  want = _reference(q, k, v, seg, pos, True)
  got = kernels.fused_attention("splash", q, k, v, seg, seg, True, 256, 128, interpret=True)  # 256 -> 128
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


def test_entry_point_falls_back_to_xla_where_splash_cannot_tile():
  cfg = layers.TransformerConfig(vocab_size=8, attention_impl="splash", attention_interpret=True)
  q, k, v, seg, pos = _inputs(T=100)
  got = layers.attention(q, k, v, seg, seg, pos, pos, True, cfg)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(_reference(q, k, v, seg, pos, True)))


_SHARDED = """
import sys, jax, numpy as np
sys.path.insert(0, sys.argv[1])
from test_models_kernels import _fused, _inputs, _reference
from lm import parallel
mesh = jax.make_mesh((1, 2, 2), parallel.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
q, k, v, seg, pos = _inputs(K=2)
want = _reference(q, k, v, seg, pos, True)
with parallel.activation_context(mesh):
  got = jax.jit(_fused("splash", True))(q, k, v, seg)
  grad = jax.jit(jax.grad(lambda q: _fused("splash", True)(q, k, v, seg).sum()))(q)
assert len(got.sharding.device_set) == 4
np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)
g = jax.grad(lambda q: _reference(q, k, v, seg, pos, True).sum())(q)
np.testing.assert_allclose(np.asarray(grad), np.asarray(g), rtol=1e-4, atol=1e-4)
print("ok")
"""


def test_sharded_kernel_equals_unsharded():
  """Under a (data, fsdp, tensor) mesh of 4 devices the kernel runs per shard (rows over fsdp, heads over
  tensor) and equals the one-device reference, gradient included."""
  import os
  import pathlib
  import subprocess
  import sys
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  here = pathlib.Path(__file__).parent
  proc = subprocess.run([sys.executable, "-c", _SHARDED, str(here)], capture_output=True, text=True, env=env,
                        cwd=here.parent, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
