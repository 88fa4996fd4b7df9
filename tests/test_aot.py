"""`lm compile` and the chip table (`lm/aot.py`, `lm/hardware.py`): a tiny config compiled ahead of time for a
real TPU topology by libtpu on this CPU machine, the DOES NOT FIT line when the compiler runs out of HBM, and
the libtpu flags per generation."""

import json
import types

import pytest

from lm import config as config_lib
from lm import hardware
from lm.errors import ConfigError


@pytest.mark.parametrize("kind, chip, hbm, peak", [
    ("TPU v4", "TPU v4", 32, 275e12), ("TPU v5 lite", "TPU v5e", 16, 197e12), ("TPU v5", "TPU v5p", 95, 459e12),
    ("TPU v6 lite", "TPU v6e", 32, 918e12), ("NVIDIA H100 80GB HBM3", "NVIDIA H100", 80, 989e12),
    ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB", 80, 312e12), ("NVIDIA H200", "NVIDIA H200", 141, 989e12),
    ("NVIDIA A100-SXM4-40GB", "NVIDIA A100 40GB", 40, 312e12), ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe", 80, 756e12),
    ("NVIDIA B200", "NVIDIA B200", 192, 2.25e15)])
def test_chip_table(kind, chip, hbm, peak):
  spec = hardware.device_spec(types.SimpleNamespace(device_kind=kind))
  assert (spec.chip, spec.hbm_bytes / hardware.GIB, spec.peak_bf16) == (chip, hbm, peak)


def test_a_device_not_in_the_table_has_no_peak():
  assert hardware.device_spec(types.SimpleNamespace(device_kind="cpu")) is None
  assert hardware.peak_flops([types.SimpleNamespace(device_kind="TPU v4")] * 3 +
                             [types.SimpleNamespace(device_kind="cpu")]) is None
  assert hardware.peak_flops([types.SimpleNamespace(device_kind="TPU v4")] * 4) == 4 * 275e12


def test_tpu_flags_per_generation_and_the_users_own_win():
  assert hardware.tpu_generation("v5litepod-16") == hardware.tpu_generation("v5e:4x4") == "v5e"
  assert hardware.tpu_generation("v5p-32") == "v5p" and hardware.tpu_generation("") is None
  assert hardware.tpu_flags("v5p") == hardware.ASYNC_COLLECTIVES
  assert hardware.tpu_flags("v5e") == hardware.ASYNC_COLLECTIVES + hardware.CONTINUATION_FUSION
  assert hardware.tpu_flags(None) == ()
  env = {"LIBTPU_INIT_ARGS": "--xla_enable_async_all_gather=false"}
  added = hardware.apply_tpu_flags(env, "v4")
  assert "--xla_enable_async_all_gather=true" not in added and len(added) == 2
  assert env["LIBTPU_INIT_ARGS"].split() == ["--xla_enable_async_all_gather=false", *added]
  assert hardware.apply_tpu_flags(env, "v4") == []  # idempotent


libtpu = pytest.importorskip("libtpu", reason="lm compile needs libtpu: pip install -e '.[tpu]'")


def _tiny(*overrides):
  config = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(config, ["mesh.data=1", "mesh.fsdp=-1", *overrides])
  return config


def test_a_bad_topology_is_one_line():
  with pytest.raises(ConfigError, match=r"--topology 'v9:3x3' is not a TPU topology libtpu builds"):
    hardware.topology_devices("v9:3x3")


@pytest.mark.slow
def test_compile_tiny_for_a_v4_slice(tmp_path, capsys):
  from lm import cli
  out = tmp_path / "report.json"
  assert cli.main(["compile", "token_ntp:tiny", "--topology", "v4:2x2x1", "--json", str(out), "--config.mesh.data=1",
                   "--config.mesh.fsdp=-1", "--config.train.tpu_flags=false"]) == 0
  printed = capsys.readouterr().out
  r = json.loads(out.read_text())
  assert r["devices"] == 4 and r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and r["fits"]
  assert r["hbm_bytes_per_device"] == 32 * hardware.GIB and r["model"]["attention_impl"] == "splash"
  train = r["train"]["memory"]
  assert 0 < train["argument"] < train["peak"] < 64 << 20
  # compiled FLOPs count elementwise work and the optimizer, so a little above the analytic model FLOPs
  assert 1.0 < r["compiled_flops_per_step"] / r["analytic_flops_per_step"] < 1.5
  assert r["train"]["collectives"].get("all-gather", 0) > 0  # fsdp gathers its params
  assert "FITS: peak" in printed and "step time estimate (roofline, not a measurement)" in printed


@pytest.mark.slow
def test_a_step_that_does_not_fit_says_so_and_what_to_change(tmp_path, capsys):
  from lm import aot
  config = _tiny("data.batch_size=1024", "data.seq_len=4096")
  report = aot.compile_report(config, "v5e:2x2", flops=False)
  assert not report["fits"]
  text = aot.format_report(report)
  assert "DOES NOT FIT in 16.00 GiB per device; try --config.model.remat_policy=dots" in text
  assert "--config.train.grad_accum=2" in text
