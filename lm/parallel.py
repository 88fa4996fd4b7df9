"""The device mesh, the one table of logical-axis rules, and placing arrays on the mesh.

Model code names logical axes only; this file alone maps them to the mesh axes `data`, `fsdp`, `tensor`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lm.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. A mesh axis already used by an earlier dimension of the same array is skipped,
# so activations [batch, length, embed] shard batch over (data, fsdp) and leave embed whole.
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("layers", None),
)

BATCH_SPEC = P(("data", "fsdp"))


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Sizes of (data, fsdp, tensor); one may be -1 (the rest of the devices). Errors name the numbers."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"mesh (data, fsdp, tensor)={tuple(sizes)}: sizes must be positive with at most one -1")
  known = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % known:
      raise ConfigError(f"mesh (data, fsdp, tensor)={tuple(sizes)}: fixed axes multiply to {known}, which "
                        f"does not divide the {num_devices} devices; pick sizes whose product divides it")
    sizes[free[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"mesh (data, fsdp, tensor)={tuple(sizes)} has {math.prod(sizes)} devices but "
                      f"{num_devices} are present; make the product {num_devices} or set one axis to -1")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def check_divisibility(config, mesh: Mesh) -> None:
  """Errors before compile for shapes the mesh cannot split evenly."""
  m, tensor = config.model, mesh.shape["tensor"]
  for key in ("num_heads", "num_kv_heads", "d_ff"):
    if m[key] % tensor:
      raise ConfigError(f"model.{key}={m[key]} is not divisible by mesh.tensor={tensor}; "
                        f"use a tensor size dividing it")
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = config.data.batch_size // config.train.grad_accum
  if micro % shards:
    raise ConfigError(f"data.batch_size={config.data.batch_size} (per microbatch {micro}) is not divisible "
                      f"by mesh data x fsdp = {shards}; use a batch that is a multiple of {shards}")


def logical_sharding(boxed_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, BATCH_SPEC)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Process-local rows -> global arrays sharded over (data, fsdp)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def activation_context(mesh: Mesh):
  """Context under which `nn.with_logical_constraint` inside model code resolves against `mesh`."""
  import contextlib
  stack = contextlib.ExitStack()
  stack.enter_context(jax.set_mesh(mesh))
  stack.enter_context(nn.logical_axis_rules(RULES))
  return stack
