"""The device mesh, the one table of logical-axis rules, placing arrays on the mesh, multi-host setup.

Model code names logical axes only; this file alone maps them to the mesh axes `data`, `fsdp`, `tensor`.
"""

from __future__ import annotations

import math
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lm.errors import ConfigError, plural

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
                        f"does not divide the {plural(num_devices, 'device')} present; pick sizes whose product "
                        "divides it")
    sizes[free[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"mesh (data, fsdp, tensor)={tuple(sizes)} has {plural(math.prod(sizes), 'device')} but "
                      f"{plural(num_devices, 'device')} {'is' if num_devices == 1 else 'are'} present; make the product {num_devices} or set one axis to -1")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def check_divisibility(config, mesh: Mesh, extra: dict[str, int] | None = None) -> None:
  """Errors before compile for shapes the mesh cannot split evenly; `extra` names a family's own fields
  (`Family.tensor_split_fields`) that `mesh.tensor` must divide."""
  m, tensor = config.model, mesh.shape["tensor"]
  checks = [(f"model.{k}", m[k]) for k in ("num_heads", "num_kv_heads", "d_ff")] + list((extra or {}).items())
  for key, value in checks:
    if value % tensor:
      raise ConfigError(f"{key}={value} is not divisible by mesh.tensor={tensor}; use a tensor size dividing it")
  if m.vocab_multiple % tensor:
    raise ConfigError(f"model.vocab_multiple={m.vocab_multiple} is not divisible by mesh.tensor={tensor}; "
                      f"set it to a multiple of {tensor} so the vocabulary splits evenly")
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


def to_host(x) -> np.ndarray:
  """A device array as numpy on every process, also when its shards span other processes' devices (a
  collective then: every process must call it)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


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


# ---------------------------------------------------------------------------------------------------------
# Multi-host: one process per host (TPU), per GPU (SLURM) or per fake host (local CPU processes).

# What jax's own cluster detection (jax/_src/clusters/) keys on, read without its metadata-server query.
_TPU_ENV = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")
_SLURM_ENV = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def _on_cloud_tpu_vm() -> bool:
  """`import jax` sets this flag on a Cloud TPU VM (TPU chips on the PCI bus and libtpu installed)."""
  try:
    from jax._src import cloud_tpu_init
  except ImportError:
    return False
  return bool(cloud_tpu_init.running_in_cloud_tpu_vm)


def detect_cluster(environ=None, tpu_vm: bool | None = None) -> str | None:
  """"tpu" or "slurm" when jax can find this process's peers by itself, else None (a single process)."""
  env = os.environ if environ is None else environ
  if any(env.get(k) for k in _TPU_ENV):
    return "tpu"
  # On a GCE TPU VM the worker list is in the metadata server, which jax queries; one worker: one process.
  if "TPU_SKIP_MDS_QUERY" not in env and (_on_cloud_tpu_vm() if tpu_vm is None else tpu_vm):
    return "tpu"
  # srun sets SLURM_PROCID per task; a bare `salloc` shell or a one-task job is a single process.
  if all(env.get(k) for k in _SLURM_ENV) and int(env["SLURM_NTASKS"]) > 1:
    return "slurm"
  return None


def check_distributed_args(coordinator: str | None, num_processes: int | None,
                           process_id: int | None) -> bool:
  """True when explicit multi-process flags are given; one-line `ConfigError` when they disagree."""
  given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
  if all(v is None for v in given.values()):
    return False
  missing = [k for k, v in given.items() if v is None]
  if missing:
    have = " ".join(k for k, v in given.items() if v is not None)
    raise ConfigError(f"{have} also needs {' and '.join(missing)}: give --coordinator HOST:PORT "
                      "--num-processes N --process-id I together (or none, to auto-detect TPU/SLURM)")
  host, _, port = coordinator.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ConfigError(f"--coordinator {coordinator!r} is not HOST:PORT; e.g. --coordinator 10.0.0.1:1234 "
                      "(process 0's address, the same on every process)")
  if num_processes < 1:
    raise ConfigError(f"--num-processes {num_processes} must be at least 1")
  if not 0 <= process_id < num_processes:
    raise ConfigError(f"--process-id {process_id} is outside [0, {num_processes}); number the processes "
                      f"0 to {num_processes - 1}")
  return True


# XLA:CPU splits a dot over cores itself from about this size (BUILD_NOTES, issue 13: one device per core
# sped up steps whose largest matmul was 68 MFLOP by 1.28x and 604 MFLOP by 1.12x, and slowed one of 3.2
# GFLOP by 1.15x while holding a copy of the state per device).
CPU_SPLIT_MAX_DOT_FLOPS = 1e9


def cpu_device_count(config, cores: int) -> int:
  """The XLA:CPU devices to make for `config` on `cores` cores: `mesh.cpu_devices`, or when it is 0 (auto)
  the most devices, up to `cores`, that divide the training and evaluation rows of a data-only mesh (a
  batch of 12 on 8 cores gets 6, on 2 cores 2), and 1 for a mesh with fsdp or tensor axes or a model whose
  MLP matmul (rows x seq_len x d_model x d_ff) is big enough for XLA:CPU to split it over cores itself."""
  m = config.mesh
  if m.cpu_devices:
    return m.cpu_devices
  if m.data != -1 or m.fsdp != 1 or m.tensor != 1:
    return 1
  rows = config.data.batch_size // max(config.train.grad_accum, 1)
  if 2.0 * rows * config.data.seq_len * config.model.d_model * config.model.d_ff >= CPU_SPLIT_MAX_DOT_FLOPS:
    return 1
  eval_rows = config.eval.batch_size or rows
  return max(d for d in range(1, max(cores, 1) + 1) if rows % d == 0 and eval_rows % d == 0)


def use_cpu_cores(config) -> int | None:
  """Split this host's XLA:CPU platform into `cpu_device_count` devices, before any backend exists.

  Measured on a 2-core CPU (BUILD_NOTES, issue 13): the tiny token model's step ran ~1.25-1.45x faster on 2
  devices than on one, because XLA:CPU runs each device's program on its own thread and parallelises
  little inside a program at these sizes. Does nothing (returns None) when the device count is already
  set (XLA_FLAGS' --xla_force_host_platform_device_count, `jax_num_cpu_devices`) or a backend is up;
  harmless where the run uses an accelerator (the CPU platform is then only the host's).
  """
  import os
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "") or jax.config.jax_num_cpu_devices != -1:
    return None
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  n = cpu_device_count(config, cores)
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # a backend is already initialised (an in-process caller): keep its devices
    return None
  return n


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> str | None:
  """Join the processes of a multi-process run; call before anything touches devices.

  Explicit flags win; otherwise a TPU pod or a SLURM job step is detected and jax finds its peers itself;
  otherwise this is a single process and nothing happens. Returns how it was set up ("explicit", "tpu",
  "slurm") or None.
  """
  explicit = check_distributed_args(coordinator, num_processes, process_id)
  how = "explicit" if explicit else detect_cluster()
  if how is None or jax.distributed.is_initialized():
    return how
  # CPU processes exchange collectives over TCP (gloo); without it a CPU computation spanning processes
  # fails. It only affects the CPU client, so it is harmless on TPU/GPU. An explicit choice is kept.
  if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()
  return how


def process_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's contiguous block of a global host batch, rows [i*B/n, (i+1)*B/n) (as in training)."""
  n, i = jax.process_count(), jax.process_index()
  if n == 1:
    return batch
  rows = len(next(iter(batch.values())))
  if rows % n:
    raise ConfigError(f"a batch of {plural(rows, 'row')} cannot be split over {plural(n, 'process', 'processes')}; "
                      "make eval.batch_size "
                      f"(or data.batch_size) a multiple of {n}")
  per = rows // n
  return {k: v[i * per : (i + 1) * per] for k, v in batch.items()}
