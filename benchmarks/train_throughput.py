"""Training throughput of the token-family step: tokens/s, MFU, overhead over a hand-written step, compile time.

Run:
  python benchmarks/train_throughput.py                 # a few minutes on a 2-core CPU
  python benchmarks/train_throughput.py --quick         # smoke mode, well under a minute
Writes JSON to --out (default benchmarks/results/train_throughput.json) and prints a table.

Shape (the project's issue): bytes (V=259), 4 layers, 4 heads, D=128, T=64, B=12. The issue leaves the MLP
width open; a PyTorch reference would use a 4x GELU MLP (2 * 4 * D^2 weights), and the SwiGLU width with the
same parameter count is 8/3 * D ~ 341, so the default is d_ff=344 (a multiple of 8).

The hand-written step below is a from-scratch jax + optax version of the same math (pre-norm RMSNorm, RoPE,
causal + packed-segment attention, SwiGLU, tied embeddings, token-mean cross-entropy, global-norm clipping
and AdamW with no decay on vectors), written the way one would without the framework: a dict of stacked
per-layer weights and a Python loop over layers. Its ratio to the framework's step is the framework overhead.
Every timing that is compared is measured in the same process, interleaved, with the median over repeats,
because shared CPUs are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lm import config as config_lib  # noqa: E402
from lm import objectives, parallel  # noqa: E402
from lm.data.tokenizers import ByteTokenizer  # noqa: E402
from lm.train import run as run_lib  # noqa: E402
from lm.train.optim import learning_rate  # noqa: E402
from lm.train.step import make_train_step  # noqa: E402

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "train_throughput.json"


# ---------------------------------------------------------------------------------------------------------
# Shape, FLOPs and the matmul peak.

def model_config(layers: int, d_model: int, heads: int, d_ff: int, seq_len: int, batch: int,
                 scan_unroll: int = 0, steps: int = 1000):
  config = config_lib.load_experiment("token_ntp:tiny")
  config.model.update(d_model=d_model, num_layers=layers, num_heads=heads, num_kv_heads=heads, d_ff=d_ff,
                      scan_layers=True, scan_unroll=scan_unroll)
  config.data.update(seq_len=seq_len, batch_size=batch)
  config.train.update(steps=steps)
  return config


def train_flops(layers: int, d_model: int, heads: int, d_ff: int, seq_len: int, batch: int, vocab: int) -> float:
  """Matmul FLOPs of one training step (forward + backward = 3x forward); causal attention counted at half."""
  D, F, T = d_model, d_ff, seq_len
  per_token_layer = 2 * (4 * D * D) + 2 * (3 * D * F) + 2 * 2 * T * D / 2  # qkvo, SwiGLU, QK^T and AV (causal)
  per_token = layers * per_token_layer + 2 * D * vocab                      # + tied unembedding
  return 3.0 * per_token * batch * T


def matmul_peak(n: int, repeats: int) -> float:
  """float32 FLOP/s of a square matmul in this process (the MFU denominator)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  inner = max(1, int(2e9 / (2 * n ** 3)))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(inner):
      out = f(a, b)
    out.block_until_ready()
    times.append((time.perf_counter() - t) / inner)
  return 2 * n ** 3 / min(times)


def random_batch(batch: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (batch, seq_len + 1)).astype(np.int32)
  # Two packed documents per row, so the segment mask does real work.
  segment_ids = np.where(np.arange(seq_len) < seq_len // 2, 1, 2).astype(np.int32)
  positions = np.where(np.arange(seq_len) < seq_len // 2, np.arange(seq_len), np.arange(seq_len) - seq_len // 2)
  return dict(inputs=jnp.asarray(tokens[:, :-1]), targets=jnp.asarray(tokens[:, 1:]),
              segment_ids=jnp.asarray(np.tile(segment_ids, (batch, 1))),
              positions=jnp.asarray(np.tile(positions.astype(np.int32), (batch, 1))),
              loss_mask=jnp.ones((batch, seq_len), jnp.int32))


# ---------------------------------------------------------------------------------------------------------
# The framework's step, exactly as `lm train` builds it.

def framework_step(config):
  """-> (step_fn, state, run): the jitted, donating step from `lm.train.step` on a fresh state."""
  tokenizer = ByteTokenizer()
  run = run_lib.build_run(config, tokenizer)
  cfg = run.config
  unit_bytes = jnp.asarray(tokenizer.unit_bytes(), jnp.float32)
  step = make_train_step(run.model, objectives.build(cfg.objectives), run.tx,
                         learning_rate(cfg.optim, cfg.train.steps), unit_bytes, cfg.train.grad_accum)
  step = jax.jit(step, in_shardings=(run.state_shardings, parallel.batch_sharding(run.mesh)),
                 out_shardings=(run.state_shardings, parallel.replicated(run.mesh)), donate_argnums=0)
  return step, run.init(0), run


# ---------------------------------------------------------------------------------------------------------
# The hand-written step: the same model and optimizer in plain jax + optax.

def hand_init(key, layers, d_model, heads, d_ff, vocab, std=0.02):
  D, F, L = d_model, d_ff, layers
  ks = jax.random.split(key, 8)
  normal = lambda k, shape: std * jax.random.normal(k, shape, jnp.float32)  # noqa: E731
  return dict(
      embedding=jax.random.normal(ks[0], (vocab, D), jnp.float32),
      wq=normal(ks[1], (L, D, D)), wk=normal(ks[2], (L, D, D)), wv=normal(ks[3], (L, D, D)),
      wo=normal(ks[4], (L, D, D)), w_gate=normal(ks[5], (L, D, F)), w_up=normal(ks[6], (L, D, F)),
      w_down=normal(ks[7], (L, F, D)), attn_norm=jnp.ones((L, D)), mlp_norm=jnp.ones((L, D)),
      final_norm=jnp.ones((D,)))


def make_hand_step(layers, heads, lr_schedule, optim_cfg, eps=1e-6, rope_base=10_000.0):
  def rms_norm(x, scale):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale

  def rope(x, pos):
    half = x.shape[-1] // 2
    angle = pos[..., None].astype(jnp.float32) * rope_base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    sin, cos = jnp.sin(angle)[:, :, None], jnp.cos(angle)[:, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

  def forward(p, batch):
    ids, pos, seg = batch["inputs"], batch["positions"], batch["segment_ids"]
    B, T = ids.shape
    D = p["embedding"].shape[1]
    E = D // heads
    mask = ((seg[:, :, None] == seg[:, None, :]) & (pos[:, None, :] <= pos[:, :, None]))[:, None]
    x = p["embedding"][ids]
    for i in range(layers):
      h = rms_norm(x, p["attn_norm"][i])
      q = rope((h @ p["wq"][i]).reshape(B, T, heads, E), pos)
      k = rope((h @ p["wk"][i]).reshape(B, T, heads, E), pos)
      v = (h @ p["wv"][i]).reshape(B, T, heads, E)
      s = jnp.einsum("bthe,bshe->bhts", q, k) / math.sqrt(E)
      a = jax.nn.softmax(jnp.where(mask, s, -1e30), axis=-1)
      x = x + jnp.einsum("bhts,bshe->bthe", a, v).reshape(B, T, D) @ p["wo"][i]
      h = rms_norm(x, p["mlp_norm"][i])
      x = x + (jax.nn.silu(h @ p["w_gate"][i]) * (h @ p["w_up"][i])) @ p["w_down"][i]
    x = rms_norm(x, p["final_norm"])
    return x @ (p["embedding"].T / math.sqrt(D))

  def loss_fn(p, batch):
    logits = forward(p, batch)
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0]
    mask = batch["loss_mask"].astype(jnp.float32)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)

  o = optim_cfg
  tx = optax.chain(optax.clip_by_global_norm(o.clip_norm),
                   optax.adamw(lr_schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                               mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1)), tx


# ---------------------------------------------------------------------------------------------------------
# Timing.

class Stepper:
  """Holds a step function and its state so several can be timed interleaved."""

  def __init__(self, name, fn, state, batch, context=None):
    self.name, self.fn, self.state, self.batch, self.context = name, fn, state, batch, context

  def run(self, n: int) -> float:
    """Seconds per step over n steps (dispatch runs ahead; one sync at the end)."""
    ctx = self.context() if self.context else _null()
    with ctx:
      t = time.perf_counter()
      for _ in range(n):
        self.state, out = self.fn(self.state, self.batch)
      jax.block_until_ready(out)
      return (time.perf_counter() - t) / n


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def framework_stepper(name, config, batch):
  fn, state, run = framework_step(config)
  return Stepper(name, fn, state, batch, lambda: parallel.activation_context(run.mesh)), run


def hand_stepper(name, config, batch, vocab):
  m = config.model
  lr = learning_rate(config.optim, config.train.steps)
  fn, tx = make_hand_step(m.num_layers, m.num_heads, lr, config.optim, eps=m.norm_eps, rope_base=m.rope_base)
  params = hand_init(jax.random.key(0), m.num_layers, m.d_model, m.num_heads, m.d_ff, vocab)
  state = (params, tx.init(params))

  def step(state, batch):
    params, opt_state, loss = fn(state[0], state[1], batch)
    return (params, opt_state), loss
  return Stepper(name, step, state, batch)


def _has_torch() -> bool:
  import importlib.util
  return importlib.util.find_spec("torch") is not None


def torch_subprocess(shape, vocab) -> float:
  """Median seconds per step of the PyTorch reference, in its own process (see torch_reference.main)."""
  import subprocess
  args = [sys.executable, str(pathlib.Path(__file__).with_name("torch_reference.py")), f"--vocab={vocab}"]
  args += [f"--{k}={v}" for k, v in shape.items()]
  out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
  return json.loads(out)["torch_step_ms"] / 1e3


def interleaved(steppers, steps: int, repeats: int) -> dict[str, list[float]]:
  """Compile and warm each, then time `repeats` rounds of `steps` steps, alternating between them."""
  first = {}
  for s in steppers:
    t = time.perf_counter()
    s.run(1)
    first[s.name] = time.perf_counter() - t
    s.run(2)
  times = {s.name: [] for s in steppers}
  for r in range(repeats):
    order = steppers if r % 2 == 0 else steppers[::-1]
    for s in order:
      times[s.name].append(s.run(steps))
  return times, first


def first_step_seconds(config, batch) -> float:
  """Wall time of the framework's first step on a fresh model: trace, lower, compile and one run."""
  return framework_stepper("first", config, batch)[0].run(1)


# ---------------------------------------------------------------------------------------------------------

def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=str(DEFAULT_OUT))
  p.add_argument("--quick", action="store_true", help="smoke mode: fewer steps and repeats, small compiles")
  p.add_argument("--layers", type=int, default=0, help="0: 4 (2 with --quick)")
  p.add_argument("--d_model", type=int, default=128)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--d_ff", type=int, default=344)
  p.add_argument("--seq_len", type=int, default=64)
  p.add_argument("--batch", type=int, default=12)
  p.add_argument("--steps", type=int, default=0, help="steps per timed round (0: per mode)")
  p.add_argument("--repeats", type=int, default=0, help="timed rounds (0: per mode)")
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=_has_torch(),
                 help="also time a PyTorch CPU reference of the same model in the same run (default: if installed)")
  args = p.parse_args(argv)
  args.layers = args.layers or (2 if args.quick else 4)
  steps = args.steps or (2 if args.quick else 10)
  repeats = args.repeats or (2 if args.quick else 9)
  vocab = ByteTokenizer().vocab_size
  shape = dict(layers=args.layers, d_model=args.d_model, heads=args.heads, d_ff=args.d_ff,
               seq_len=args.seq_len, batch=args.batch)
  tokens = args.batch * args.seq_len
  batch = random_batch(args.batch, args.seq_len, vocab)

  peak = matmul_peak(512 if args.quick else 1024, 3 if args.quick else 5)
  flops = train_flops(vocab=vocab, **shape)

  # Throughput and overhead: the framework (per-backend defaults), the hand-written step, and the
  # framework with a rolled scan, timed interleaved in this process.
  # With the framework's CPU default (scan_unroll=0 -> fully unrolled) when nothing is passed.
  fw, run = framework_stepper("framework", model_config(**shape), batch)
  hand = hand_stepper("hand", run.config, batch, vocab)
  rolled, _ = framework_stepper("framework_rolled", model_config(**shape, scan_unroll=1), batch)
  torch_runs = [torch_subprocess(shape, vocab)] if args.torch else []
  times, first = interleaved([fw, hand, rolled], steps, repeats)
  if args.torch:
    torch_runs.append(torch_subprocess(shape, vocab))
  med = {k: statistics.median(v) for k, v in times.items()}
  ratios = [f / h for f, h in zip(times["framework"], times["hand"])]
  rolled_ratios = [r / f for r, f in zip(times["framework_rolled"], times["framework"])]

  # First-step (compile) time against depth, rolled (unroll=1) and fully unrolled. The steppers above
  # already paid it at the benchmark depth; other depths get a fresh model each.
  depths = (1, 2) if args.quick else (2, 12)
  reuse = {("rolled", args.layers): first["framework_rolled"]}
  if run.config.model.scan_unroll >= args.layers:  # the per-backend default was fully unrolled (CPU)
    reuse[("unrolled", args.layers)] = first["framework"]
  compile_s = {}
  for unroll_name, unroll in (("rolled", 1), ("unrolled", 10_000)):
    for n in depths:
      compile_s[f"{unroll_name}_{n}"] = reuse.get((unroll_name, n)) or first_step_seconds(
          model_config(**dict(shape, layers=n), scan_unroll=unroll), batch)
      if n == 1:  # one layer is the same program either way (the scan is unrolled when unroll >= length)
        reuse[("unrolled", 1)] = compile_s[f"{unroll_name}_{n}"]

  result = dict(
      shape=dict(shape, vocab=vocab, tokens_per_step=tokens),
      backend=jax.default_backend(), devices=jax.device_count(), machine=platform.machine(),
      cpu_count=os.cpu_count(), jax=jax.__version__, quick=args.quick, steps_per_round=steps,
      repeats=repeats, xla_flags=os.environ.get("XLA_FLAGS", ""),
      scan_unroll=run.config.model.scan_unroll, attention_impl=run.config.model.attention_impl,
      matmul_peak_flops=peak, train_flops_per_step=flops,
      step_ms=med["framework"] * 1e3, tokens_per_s=tokens / med["framework"],
      mfu=flops / med["framework"] / peak,
      hand_step_ms=med["hand"] * 1e3, hand_tokens_per_s=tokens / med["hand"],
      hand_mfu=flops / med["hand"] / peak,
      overhead_ratio=statistics.median(ratios), overhead_ratios=ratios,
      rolled_step_ms=med["framework_rolled"] * 1e3, rolled_over_unrolled=statistics.median(rolled_ratios),
      first_step_s=first,
      compile_s=compile_s, compile_depths=list(depths),
      rolled_compile_ratio=compile_s[f"rolled_{depths[1]}"] / compile_s[f"rolled_{depths[0]}"],
      unrolled_compile_ratio=compile_s[f"unrolled_{depths[1]}"] / compile_s[f"unrolled_{depths[0]}"],
      step_ms_all={k: [t * 1e3 for t in v] for k, v in times.items()},
  )
  if torch_runs:
    import torch
    med["pytorch"] = statistics.median(torch_runs)  # before and after the jax rounds, in a subprocess
    result.update(torch=torch.__version__, torch_step_ms=med["pytorch"] * 1e3,
                  torch_step_ms_runs=[t * 1e3 for t in torch_runs], torch_tokens_per_s=tokens / med["pytorch"],
                  framework_over_torch=med["framework"] / med["pytorch"])

  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")

  print(f"train_throughput: {args.layers}L D={args.d_model} H={args.heads} F={args.d_ff} T={args.seq_len} "
        f"B={args.batch} V={vocab}, {jax.default_backend()} x{jax.device_count()}, "
        f"{steps} steps x {repeats} rounds, matmul peak {peak / 1e9:.1f} GFLOP/s")
  rows = [("framework (scan_unroll=%d)" % run.config.model.scan_unroll, med["framework"]),
          ("hand-written jax+optax", med["hand"]), ("framework rolled (unroll=1)", med["framework_rolled"])]
  if "pytorch" in med:
    rows.append(("pytorch eager (own process)", med["pytorch"]))
  print(f"  {'step':32s} {'ms/step':>8s} {'tok/s':>8s} {'MFU':>6s} {'/hand':>6s}")
  for name, t in rows:
    print(f"  {name:32s} {t * 1e3:8.2f} {tokens / t:8.0f} {flops / t / peak:6.1%} {t / med['hand']:6.3f}")
  print(f"  overhead ratio (median of same-round ratios): {result['overhead_ratio']:.3f}; "
        f"rolled/unrolled step: {result['rolled_over_unrolled']:.3f}")
  print("  first step incl. compile (s): " + ", ".join(f"{k} {v:.2f}" for k, v in compile_s.items())
        + f"; rolled {depths[1]}L/{depths[0]}L = {result['rolled_compile_ratio']:.2f}x, "
        f"unrolled = {result['unrolled_compile_ratio']:.2f}x")
  print(f"  wrote {out}")
  return result


if __name__ == "__main__":
  main()
