"""What an accelerator chip can do (HBM, peak bf16 FLOP/s, HBM bandwidth), per jax device, and TPU topologies
that libtpu builds on any machine for ahead-of-time compiles (`lm compile`).

Figures are the vendors' published dense bf16 peaks and HBM sizes per chip. A TPU v4 or v5p chip has two
TensorCores that jax shows as one device ("megacore"); topologies here are built that way, as pods run.
"""

from __future__ import annotations

import dataclasses

from lm.errors import ConfigError

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: float        # per chip
  peak_bf16: float        # dense FLOP/s per chip
  hbm_bandwidth: float    # bytes/s per chip
  cores: int = 1          # TensorCores per chip (TPU)


CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, 1.2e12, cores=2),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, 0.82e12),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, 2.76e12, cores=2),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, 1.64e12),
    "a100": Chip("NVIDIA A100 80GB", 80 * GIB, 312e12, 2.04e12),
    "a100-40": Chip("NVIDIA A100 40GB", 40 * GIB, 312e12, 1.56e12),
    "h100": Chip("NVIDIA H100", 80 * GIB, 989e12, 3.35e12),
    "h100-pcie": Chip("NVIDIA H100 PCIe", 80 * GIB, 756e12, 2.0e12),
    "h200": Chip("NVIDIA H200", 141 * GIB, 989e12, 4.8e12),
    "b200": Chip("NVIDIA B200", 192 * GIB, 2.25e15, 8.0e12),
}

# jax's device_kind -> table key; the first entry whose substrings all occur wins (so "v5 lite" before "v5",
# the 40 GB A100 and the PCIe H100 before their larger or faster SXM parts).
_KINDS = ((("tpu v5 lite",), "v5e"), (("tpu v5e",), "v5e"), (("tpu v5p",), "v5p"), (("tpu v5",), "v5p"),
          (("tpu v6",), "v6e"), (("tpu v4",), "v4"), (("a100", "40gb"), "a100-40"), (("a100",), "a100"),
          (("h100", "pcie"), "h100-pcie"), (("h100",), "h100"), (("h200",), "h200"), (("b200",), "b200"))


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
  """One jax device's share of its chip."""
  chip: str
  hbm_bytes: float
  peak_bf16: float
  hbm_bandwidth: float


def device_spec(device) -> DeviceSpec | None:
  """The chip figures of one jax device (a share of the chip when a chip shows as several devices), or None
  for CPUs and chips not in the table."""
  kind = str(getattr(device, "device_kind", "")).lower()
  key = next((k for subs, k in _KINDS if all(s in kind for s in subs)), None)
  if key is None:
    return None
  chip = CHIPS[key]
  share = chip.cores / max(int(getattr(device, "num_cores", chip.cores) or chip.cores), 1)
  share = max(share, 1.0)
  return DeviceSpec(chip.name, chip.hbm_bytes / share, chip.peak_bf16 / share, chip.hbm_bandwidth / share)


def peak_flops(devices) -> float | None:
  """The summed peak bf16 FLOP/s of `devices`, or None when any is not in the table (CPU)."""
  specs = [device_spec(d) for d in devices]
  if not specs or any(s is None for s in specs):
    return None
  return sum(s.peak_bf16 for s in specs)


# libtpu flags that overlap collectives with compute (the groups MaxText keeps in its xla_flags_library). Each
# set was compiled here for its generation with libtpu 0.0.52 (`lm compile`, BUILD_NOTES issue 15): the async
# collectives for v4, v5e, v5p and v6e; continuation fusion of all-gathers only for v5e, as libtpu refuses it
# elsewhere ("not supported/recommended on platforms other than TPU v5e").
ASYNC_COLLECTIVES = ("--xla_enable_async_all_reduce=true", "--xla_enable_async_all_gather=true",
                     "--xla_tpu_overlap_compute_collective_tc=true")
CONTINUATION_FUSION = ("--xla_tpu_enable_async_collective_fusion=true",
                       "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
                       "--xla_tpu_enable_async_collective_fusion_multiple_steps=true")
_GENERATIONS = (("v5litepod", "v5e"), ("v5e", "v5e"), ("v5p", "v5p"), ("v6e", "v6e"), ("v4", "v4"))


def tpu_generation(name: str) -> str | None:
  """`v4`, `v5e`, `v5p` or `v6e` of a Cloud TPU accelerator type (`v5litepod-16`, `v5p-32`) or a topology name
  (`v5e:4x4`); None when it names none of them."""
  name = (name or "").lower()
  return next((g for prefix, g in _GENERATIONS if name.startswith(prefix)), None)


def local_tpu_generation(environ) -> str | None:
  """This host's TPU generation before libtpu starts: `TPU_ACCELERATOR_TYPE` if set, else the chips' PCI ids
  (jax's own probe, which reads /sys and starts nothing); None without TPU chips."""
  named = tpu_generation(environ.get("TPU_ACCELERATOR_TYPE", ""))
  if named:
    return named
  try:
    from jax._src import hardware_utils
    chips, version = hardware_utils.num_available_tpu_chips_and_device_id()
  except Exception:  # pylint: disable=broad-except  # a private helper: without it, no flags
    return None
  return tpu_generation(version.name) if chips and version is not None else None


def tpu_flags(generation: str | None) -> tuple[str, ...]:
  if generation not in ("v4", "v5e", "v5p", "v6e"):
    return ()
  return ASYNC_COLLECTIVES + (CONTINUATION_FUSION if generation == "v5e" else ())


def apply_tpu_flags(environ, generation: str | None) -> list[str]:
  """Adds `tpu_flags(generation)` to LIBTPU_INIT_ARGS in `environ`, except flags it names already (the user's
  choice wins); returns those added. Must run before libtpu starts (jax's first use of a TPU)."""
  current = environ.get("LIBTPU_INIT_ARGS", "")
  named = {f.split("=")[0] for f in current.split()}
  added = [f for f in tpu_flags(generation) if f.split("=")[0] not in named]
  if added:
    environ["LIBTPU_INIT_ARGS"] = " ".join([*current.split(), *added])
  return added


def topology_devices(name: str) -> list:
  """The devices of a TPU slice (`v5p:4x4x2`, `v4:2x2x1`, `v5e:4x4`, `v6e:2x2`, ...) built by libtpu on this
  machine, for ahead-of-time compiles; v4 and v5p as megacore (one device per chip). `cpu`: this machine's
  own CPU devices (compiled and analytic FLOPs checked on any machine)."""
  if name == "cpu":
    import jax
    return list(jax.devices("cpu"))
  try:
    import importlib
    importlib.import_module("libtpu")
    from jax.experimental import topologies
  except ImportError as e:
    raise ConfigError("compiling for a TPU topology needs libtpu: pip install -e '.[tpu]' (or pip install "
                      "libtpu)") from e
  import os
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # without it, a second process using libtpu here fails
  generation = name.split(":")[0].lower()
  kwargs = dict(chip_config_name="megacore") if generation in ("v4", "v5p") else {}
  try:
    return list(topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs).devices)
  except Exception as e:  # libtpu raises plain RuntimeError/ValueError for names it does not know
    first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
    raise ConfigError(f"--topology {name!r} is not a TPU topology libtpu builds ({first}); use GENERATION:SHAPE, "
                      "e.g. v4:2x2x1, v5p:4x4x2, v5e:4x4, v6e:2x2") from e
