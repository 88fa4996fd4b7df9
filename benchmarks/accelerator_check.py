"""What only a GPU or TPU can tell: the fused attention kernel's numerics on the device, then compile time,
tokens/s, MFU and peak memory of a real training run (`token_1b` by default) for a few dozen steps.

Run where an accelerator is at hand (one script, one JSON):
  python benchmarks/accelerator_check.py --out benchmarks/results/accelerator_check.json
  python benchmarks/accelerator_check.py --experiment token_1b --steps 40 --rows-per-device 8
On a CPU it runs too (the kernel in Pallas interpret mode, a small experiment), which is how the suite
checks the script itself: `--quick`.

Kernel numerics: `kernels.fused_attention` (splash on TPU, Pallas/Triton on GPU) against the XLA reference in
`layers`, forward and gradient, float32 and bfloat16, with packed segments, padding and GQA. Training:
`loop.train` on the embedded corpus with the experiment's own model, its global batch scaled to
`--rows-per-device` rows per device (one device may not hold a pod slice's batch), no checkpoints;
throughput and MFU are the loop's own metrics (from the second step on), compile time its own phase line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pathlib
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lm import config as config_lib  # noqa: E402
from lm import hardware  # noqa: E402
from lm.models import kernels, layers  # noqa: E402
from lm.train import loop  # noqa: E402

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "accelerator_check.json"
KERNEL = {"tpu": "splash", "gpu": "pallas_gpu"}


def packed_inputs(B: int, T: int, H: int, K: int, E: int, dtype, seed: int = 0):
  """q, k, v with three documents packed in row 0 and padding at the end of row 1."""
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(B, T, n, E)), dtype) for n in (H, K, K))
  seg = np.ones((B, T), np.int32)
  pos = np.tile(np.arange(T, dtype=np.int32), (B, 1))
  for start, doc in ((T // 3 + 5, 2), (2 * T // 3 + 7, 3)):
    seg[0, start:] = doc
    pos[0, start:] = np.arange(T - start)
  seg[1 % B, T - T // 5:] = 0
  pos[1 % B, T - T // 5:] = 0
  return q, k, v, jnp.asarray(seg), jnp.asarray(pos)


def kernel_numerics(kind: str, interpret: bool, T: int = 1024, block: int = 512) -> list[dict]:
  """Max |fused - reference| of the output and of dq, dk, dv (reference in float32), per dtype and GQA."""
  out = []
  for dtype in (jnp.float32, jnp.bfloat16):
    for H, K in ((8, 8), (8, 2)):
      q, k, v, seg, pos = packed_inputs(2, T, H, K, 128, dtype)
      mask = layers.attention_mask(seg, seg, pos, pos, True)

      def ref(q, k, v):
        f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
        return layers.dot_product_attention(f32(q), f32(k), f32(v), mask)

      def fused(q, k, v):
        return kernels.fused_attention(kind, q, k, v, seg, seg, True, block, block,
                                       interpret=interpret).astype(jnp.float32)

      w = jax.random.normal(jax.random.PRNGKey(1), (2, T, H, 128), jnp.float32)
      loss = lambda f: (lambda *a: jnp.sum(f(*a) * w))  # noqa: E731
      want, got = jax.jit(ref)(q, k, v), jax.jit(fused)(q, k, v)
      g_want = jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v)
      g_got = jax.jit(jax.grad(loss(fused), argnums=(0, 1, 2)))(q, k, v)
      live = np.asarray(seg) > 0  # padded queries' outputs are unspecified
      err = lambda a, b: float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))[live]))  # noqa: E731
      row = dict(kernel=kind, dtype=jnp.dtype(dtype).name, heads=H, kv_heads=K, seq=T, out=err(got, want))
      row.update({f"d{n}": err(a, b) for n, a, b in zip("qkv", g_got, g_want)})
      row["scale"] = float(np.max(np.abs(np.asarray(want))))
      out.append(row)
  return out


def training(experiment: str, steps: int, rows_per_device: int, overrides: list[str]) -> dict:
  config = config_lib.load_experiment(experiment)
  n = jax.device_count()
  config_lib.apply_overrides(config, [
      f"train.steps={steps}", f"train.log_every={max(steps // 4, 1)}", "train.eval_every=0",
      "train.checkpoint_every=0", "train.trackers=jsonl", "eval.max_batches=2", "sample.max_new=0",
      f"data.batch_size={rows_per_device * n}", "train.grad_accum=1", *overrides])
  with tempfile.TemporaryDirectory(prefix="accelerator-check-") as workdir:
    printed = io.StringIO()
    t0 = time.time()
    with contextlib.redirect_stdout(printed):
      summary = loop.train(config, workdir)
    seconds = time.time() - t0
    records = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in records if "tokens_per_sec" in r]
  steady = logged[1:] or logged  # the first window holds the warm-up step's neighbours
  compile_s = re.search(r"compiling train step: ([\d.]+)s", printed.getvalue())
  stats = jax.local_devices()[0].memory_stats() or {}
  return dict(experiment=experiment, steps=steps, devices=n, global_rows=config.data.batch_size,
              seq_len=config.data.seq_len, compile_s=float(compile_s.group(1)) if compile_s else None,
              tokens_per_s=float(np.median([r["tokens_per_sec"] for r in steady])),
              mfu=float(np.median([r["mfu"] for r in steady])) if all("mfu" in r for r in steady) else None,
              peak_bytes_per_device=stats.get("peak_bytes_in_use"), bytes_limit=stats.get("bytes_limit"),
              final_loss=logged[-1]["loss"], val_bpb=summary["val_bpb"], wall_s=seconds)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=str(DEFAULT_OUT))
  p.add_argument("--experiment", default="token_1b")
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--rows-per-device", type=int, default=8)
  p.add_argument("--quick", action="store_true", help="CPU smoke run: token_ntp:tiny, 6 steps, short kernels")
  p.add_argument("overrides", nargs="*", help="config overrides for the training run, e.g. model.remat_policy=full")
  args = p.parse_args(argv)
  backend = jax.default_backend()
  device = jax.devices()[0]
  spec = hardware.device_spec(device)
  kind = KERNEL.get(backend, "splash" if args.quick else None)
  result = dict(backend=backend, device_kind=device.device_kind, devices=jax.device_count(),
                chip=spec.chip if spec else None, peak_bf16_per_device=spec.peak_bf16 if spec else None,
                jax=jax.__version__, date=time.strftime("%Y-%m-%d"))
  if kind:
    interpret = backend not in KERNEL
    result["kernels"] = kernel_numerics(kind, interpret, T=256 if args.quick else 1024,
                                        block=128 if args.quick else 512)
    print(f"{'kernel':<11} {'dtype':<9} {'H/K':>6} {'out':>9} {'dq':>9} {'dk':>9} {'dv':>9}  (max |fused - xla|)")
    for r in result["kernels"]:
      print(f"{r['kernel']:<11} {r['dtype']:<9} {r['heads']:>3}/{r['kv_heads']:<2} {r['out']:9.2e} {r['dq']:9.2e} "
            f"{r['dk']:9.2e} {r['dv']:9.2e}")
  experiment, steps = ("token_ntp:tiny", 6) if args.quick else (args.experiment, args.steps)
  overrides = list(args.overrides) + (["data.seq_len=64"] if args.quick else [])
  result["training"] = t = training(experiment, steps, 2 if args.quick else args.rows_per_device, overrides)
  mfu = f"{100 * t['mfu']:.1f}%" if t["mfu"] is not None else "-"
  peak = f"{t['peak_bytes_per_device'] / 2**30:.2f} GiB" if t["peak_bytes_per_device"] else "-"
  print(f"{t['experiment']} on {result['devices']} x {result['device_kind']}: compile {t['compile_s']}s, "
        f"{t['tokens_per_s']:,.0f} tokens/s, MFU {mfu}, peak memory {peak} per device, loss {t['final_loss']:.3f}")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
