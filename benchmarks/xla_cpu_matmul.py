"""Minimal repro: XLA:CPU runs the train step's small matmuls on one core; PyTorch uses all of them.

Run:
  python benchmarks/xla_cpu_matmul.py            # a minute; torch columns if torch is installed
Writes JSON to --out (default benchmarks/results/xla_cpu_matmul.json) and prints a table.

For each matmul shape of the tiny model's step ([B*T, D] x [D, F] and the weight-gradient form [D, B*T] x
[B*T, F]), GFLOP/s of one jitted `jnp.dot` (median of 200 calls) on every core, and the same in a child
process pinned to one core (`os.sched_setaffinity`); float32 and bfloat16 inputs with float32 results.
A ratio all-cores / one-core near 1 means XLA:CPU did not split the op over cores. Same for `torch.mm`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "xla_cpu_matmul.json"
# (M, K, N, transposed-lhs): the tiny step's shapes at B*T = 768, then larger ones for where splitting starts.
SHAPES = [(768, 128, 384, False), (768, 128, 344, False), (768, 344, 128, False), (128, 768, 344, True),
          (3072, 128, 344, False), (1024, 1024, 1024, False)]


def _gflops(fn, flops: float, calls: int = 200) -> float:
  fn()
  times = []
  for _ in range(calls):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return flops / statistics.median(times) / 1e9


def measure_jax() -> dict:
  import jax
  import jax.numpy as jnp
  out = {}
  for dtype in ("float32", "bfloat16"):
    for M, K, N, t in SHAPES:
      a = jax.random.normal(jax.random.key(0), (K, M) if t else (M, K)).astype(dtype)
      b = jax.random.normal(jax.random.key(1), (K, N)).astype(dtype)
      f = jax.jit((lambda a, b: jnp.dot(a.T, b, preferred_element_type=jnp.float32)) if t else
                  (lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)))
      out[f"{dtype} {M}x{K}x{N}{' (lhs^T)' if t else ''}"] = _gflops(lambda: f(a, b).block_until_ready(), 2 * M * K * N)
  return out


def measure_torch() -> dict:
  import torch
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  out = {}
  for dtype in (torch.float32, torch.bfloat16):
    for M, K, N, t in SHAPES:
      a = torch.randn((K, M) if t else (M, K), dtype=dtype)
      b = torch.randn(K, N, dtype=dtype)
      f = (lambda: a.T @ b) if t else (lambda: a @ b)
      out[f"{str(dtype).split('.')[1]} {M}x{K}x{N}{' (lhs^T)' if t else ''}"] = _gflops(f, 2 * M * K * N)
  return out


def _child(which: str, one_core: bool) -> dict:
  code = (f"import os, json, sys; sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r}); "
          + ("os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); " if one_core else "")
          + f"import xla_cpu_matmul as m; print(json.dumps(m.measure_{which}()))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=str(DEFAULT_OUT))
  args = p.parse_args(argv)
  import importlib.util
  arms = {"jax": _child("jax", False), "jax_one_core": _child("jax", True)}
  if importlib.util.find_spec("torch") is not None:
    arms.update(torch=_child("torch", False), torch_one_core=_child("torch", True))
  import jax
  result = dict(cores=len(os.sched_getaffinity(0)), jax=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""),
                gflops=arms)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  names = list(arms)
  print(f"xla_cpu_matmul: GFLOP/s of one matmul, {result['cores']} cores, jax {jax.__version__}")
  print(f"  {'dtype M x K x N':34s} " + " ".join(f"{n:>14s}" for n in names) + "   jax all/one  torch all/one")
  for shape in arms["jax"]:
    row = " ".join(f"{arms[n][shape]:14.0f}" for n in names)
    ratios = f"{arms['jax'][shape] / arms['jax_one_core'][shape]:12.2f}"
    if "torch" in arms:
      ratios += f" {arms['torch'][shape] / arms['torch_one_core'][shape]:13.2f}"
    print(f"  {shape:34s} {row} {ratios}")
  print(f"  wrote {out}")
  return result


if __name__ == "__main__":
  main()
