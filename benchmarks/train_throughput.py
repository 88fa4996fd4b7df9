"""Training throughput of the token-family step against PyTorch and nanoGPT: tokens/s, MFU, peak RSS, compile time.

Run:
  python benchmarks/train_throughput.py                         # the issue's shape, a few minutes on 2 cores
  python benchmarks/train_throughput.py --shape small           # token_ntp:small's shape (no GQA)
  python benchmarks/train_throughput.py --shape 125m            # GPT-2 small's layers, rows of 256
  python benchmarks/train_throughput.py --nanogpt DIR           # also run karpathy/nanoGPT's train.py from DIR
  python benchmarks/train_throughput.py --quick                 # smoke mode, well under a minute
Writes JSON to --out (default benchmarks/results/train_throughput[_SHAPE].json) and prints a table.

Arms, all measured in one run:
  framework        `lm`'s step as `lm train` builds it, the project's architecture (RMSNorm, RoPE, SwiGLU)
  framework gpt2   the same step with nanoGPT's architecture (`model.mlp=gelu positions=learned norm=layer`,
                   d_ff = 4 * d_model)
  framework bf16   the project's architecture with bfloat16 compute (float32 params and optimizer)
  framework rolled the project's architecture with a rolled layer scan (the TPU/GPU default)
  hand-written     the project's architecture in plain jax + optax (framework overhead = framework / hand)
  one device/core  the framework's step on a data mesh of one XLA:CPU device per core (its own process)
  torch nanogpt    nanoGPT's model and step written here in PyTorch eager (benchmarks/torch_reference.py)
  torch ours       the project's architecture in PyTorch eager
  nanogpt          nanoGPT's own train.py (with --nanogpt DIR): per-iteration times from its log
and the peak RSS of whole training processes: `lm train` (both architectures), the PyTorch peers, nanoGPT.
The jax arms are timed interleaved in this process (median over rounds); the PyTorch arms in their own
processes before and after (two XLA:CPU and torch thread pools in one process slow each other down).

Shape: bytes (V=259, padded to 264 by the framework), the SwiGLU width with the GELU MLP's parameter count
(8/3 * d_model, a multiple of 8: 344 at d_model 128).
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

SHAPES = {
    "tiny": dict(layers=4, d_model=128, heads=4, seq_len=64, batch=12),    # the issue's (nanoGPT's CPU example)
    "small": dict(layers=4, d_model=192, heads=6, seq_len=128, batch=24),  # token_ntp:small, without GQA
    "125m": dict(layers=12, d_model=768, heads=12, seq_len=256, batch=4),  # GPT-2 small's layers
}
GPT2 = dict(mlp="gelu", positions="learned", norm="layer")  # nanoGPT's architecture in `config.model` terms


def swiglu_width(d_model: int) -> int:
  """The SwiGLU width whose three matrices hold as many weights as a 4x GELU MLP's two, a multiple of 8."""
  return -(-(8 * d_model // 3) // 8) * 8


def model_config(layers: int, d_model: int, heads: int, d_ff: int, seq_len: int, batch: int,
                 scan_unroll: int = 0, steps: int = 1000, arch: str = "ours", dtype: str = "auto"):
  config = config_lib.load_experiment("token_ntp:tiny")
  config.model.update(d_model=d_model, num_layers=layers, num_heads=heads, num_kv_heads=heads, d_ff=d_ff,
                      scan_layers=True, scan_unroll=scan_unroll, dtype=dtype)
  if arch == "gpt2":
    config.model.update(d_ff=4 * d_model, **GPT2)
  config.data.update(seq_len=seq_len, batch_size=batch)
  config.train.update(steps=steps)
  return config


def train_flops(layers: int, d_model: int, heads: int, d_ff: int, seq_len: int, batch: int, vocab: int,
                gated: bool = True) -> float:
  """Matmul FLOPs of one training step (forward + backward = 3x forward); causal attention counted at half."""
  D, F, T = d_model, d_ff, seq_len
  mlp = 2 * (3 if gated else 2) * D * F
  per_token_layer = 2 * (4 * D * D) + mlp + 2 * 2 * T * D / 2  # qkvo, MLP, QK^T and AV (causal)
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


# Run as `python -c _PEAK_RSS (module|path) TARGET ARGS...`: the child reports its own peak RSS (VmHWM of its
# own address space). rusage cannot: a child forked from this (large) process starts with this process's
# resident pages in its ru_maxrss, which exec does not reset.
_PEAK_RSS = """
import atexit, runpy, sys
def _report():
  try:
    kb = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0]
  except OSError:
    import resource
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc: may include the parent's
  sys.stderr.write('\\nPEAK_RSS_KB %s\\n' % kb)
atexit.register(_report)
kind, target = sys.argv[1], sys.argv[2]
sys.argv = [target] + sys.argv[3:]
(runpy.run_module if kind == 'module' else runpy.run_path)(target, run_name='__main__', **({'alter_sys': True} if kind == 'module' else {}))
"""


def run_measured(kind: str, target: str, args, env=None, cwd=None) -> tuple[str, float, float]:
  """Runs `python -m target args` (kind "module") or `python target args` ("path") in a child process:
  -> (stdout, its peak RSS in MB, wall seconds)."""
  import re
  import subprocess
  t = time.perf_counter()
  proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, kind, str(target)] + [str(a) for a in args],
                        capture_output=True, text=True, env=env, cwd=cwd)
  wall = time.perf_counter() - t
  if proc.returncode:
    raise RuntimeError(f"{target} {' '.join(map(str, args[:3]))} ... exited {proc.returncode}: {proc.stderr[-2000:]}")
  kb = re.findall(r"^PEAK_RSS_KB (\d+)$", proc.stderr, re.M)
  return proc.stdout, (int(kb[-1]) / 1024 if kb else float("nan")), wall


def torch_subprocess(shape, vocab, arch: str, steps: int, repeats: int) -> dict:
  """One PyTorch reference run in its own process (torch_reference.main): median ms/step and peak RSS."""
  args = [f"--vocab={vocab}", f"--arch={arch}", f"--steps={steps}", f"--repeats={repeats}"]
  args += [f"--{k}={v}" for k, v in shape.items()]
  out, rss, _ = run_measured("path", pathlib.Path(__file__).with_name("torch_reference.py"), args)
  result = json.loads(out.strip().splitlines()[-1])
  return dict(step_s=result["torch_step_ms"] / 1e3, rss_mb=rss)


def nanogpt_subprocess(nanogpt_dir: pathlib.Path, shape, iters: int) -> dict:
  """karpathy/nanoGPT's own train.py at this shape on bytes of the embedded corpus, as its README's CPU
  example runs it (`--device=cpu --compile=False`, float32, no dropout, no checkpoint): the median of its
  logged per-iteration times after the first 10, its peak RSS and wall time."""
  import pickle
  import re
  from lm.data import corpus
  data_dir = nanogpt_dir / "data" / "lm_bytes"
  data_dir.mkdir(parents=True, exist_ok=True)
  text = b"\n".join(corpus.stdlib_documents("python-prose"))
  ids = np.frombuffer(text, np.uint8).astype(np.uint16)
  n = int(0.9 * len(ids))
  ids[:n].tofile(data_dir / "train.bin")
  ids[n:].tofile(data_dir / "val.bin")
  (data_dir / "meta.pkl").write_bytes(pickle.dumps(dict(vocab_size=256)))
  args = ["--dataset=lm_bytes", "--device=cpu", "--compile=False", "--dropout=0.0",
          f"--n_layer={shape['layers']}", f"--n_head={shape['heads']}", f"--n_embd={shape['d_model']}",
          f"--block_size={shape['seq_len']}", f"--batch_size={shape['batch']}", "--gradient_accumulation_steps=1",
          f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--eval_interval=100000000", "--eval_iters=1",
          "--log_interval=1", "--always_save_checkpoint=False", "--out_dir=out-lm-bench", "--bias=False"]
  out, rss, wall = run_measured("path", "train.py", args, cwd=nanogpt_dir)
  times = [float(t) for t in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", out, re.M)]
  if len(times) < 12:
    raise RuntimeError(f"nanoGPT logged {len(times)} iterations; expected {iters}")
  return dict(step_s=statistics.median(times[10:]) / 1e3, rss_mb=rss, wall_s=wall, iters=iters)


def lm_train_subprocess(shape, arch: str, steps: int) -> dict:
  """A whole `lm train` run at this shape in its own process (data, compile, checkpoints, trackers, the
  final evaluation and sample): peak RSS, wall time, and the median of the tokens/s it logged."""
  import tempfile
  overrides = [f"--config.{k}={v}" for k, v in dict(
      **{"model.d_model": shape["d_model"], "model.num_layers": shape["layers"], "model.num_heads": shape["heads"],
         "model.num_kv_heads": shape["heads"], "model.d_ff": shape["d_ff"] if arch == "ours" else 4 * shape["d_model"],
         "data.seq_len": shape["seq_len"], "data.batch_size": shape["batch"], "train.steps": steps,
         "train.log_every": max(steps // 4, 1), "train.eval_every": 0, "train.checkpoint_every": steps},
      **({f"model.{k}": v for k, v in GPT2.items()} if arch == "gpt2" else {})).items()]
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp) / "run"
    args = ["train", "token_ntp:tiny", "--workdir", str(workdir)] + overrides
    _, rss, wall = run_measured("module", "lm", args, cwd=pathlib.Path(__file__).resolve().parents[1])
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  rates = [m["tokens_per_sec"] for m in logged if "tokens_per_sec" in m]
  return dict(rss_mb=rss, wall_s=wall, steps=steps, tokens_per_s_logged=statistics.median(rates) if rates else None,
              tokens_per_s_windows=rates)


def devices_subprocess(shape, devices: int, steps: int, repeats: int, arch: str = "ours") -> dict:
  """The framework's step on a data mesh of `devices` XLA:CPU devices, in its own process."""
  env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                                    f" --xla_force_host_platform_device_count={devices}").strip())
  args = ["--worker", arch, "--steps", str(steps), "--repeats", str(repeats)]
  args += [f"--{k}={v}" for k, v in shape.items()]
  out, rss, _ = run_measured("path", __file__, args, env=env)
  result = json.loads(out.strip().splitlines()[-1])
  return dict(step_s=result["step_s"], devices=result["devices"], rss_mb=rss)


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
  p.add_argument("--out", default="", help="JSON path (default benchmarks/results/train_throughput[_SHAPE].json)")
  p.add_argument("--quick", action="store_true", help="smoke mode: fewer steps and repeats, small compiles")
  p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
  p.add_argument("--layers", type=int, default=0, help="override the shape's (--quick: 2)")
  p.add_argument("--d_model", type=int, default=0)
  p.add_argument("--heads", type=int, default=0)
  p.add_argument("--d_ff", type=int, default=0, help="0: the SwiGLU width of a 4x GELU MLP")
  p.add_argument("--seq_len", type=int, default=0)
  p.add_argument("--batch", type=int, default=0)
  p.add_argument("--steps", type=int, default=0, help="steps per timed round (0: per mode and shape)")
  p.add_argument("--repeats", type=int, default=0, help="timed rounds (0: per mode)")
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=_has_torch(),
                 help="also time the PyTorch references (default: if torch is installed)")
  p.add_argument("--nanogpt", default="", help="a karpathy/nanoGPT checkout: also run its own train.py")
  p.add_argument("--rss", action=argparse.BooleanOptionalAction, default=None,
                 help="also run whole `lm train` processes for their peak RSS (default: on unless --quick)")
  p.add_argument("--devices", action=argparse.BooleanOptionalAction, default=None,
                 help="also time one XLA:CPU device per core (default: on unless --quick, if cores > 1)")
  p.add_argument("--worker", choices=("ours", "gpt2"), help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  shape = dict(SHAPES[args.shape])
  for k in ("layers", "d_model", "heads", "seq_len", "batch"):
    shape[k] = getattr(args, k) or shape[k]
  if args.quick and not args.layers:
    shape["layers"] = 2
  shape["d_ff"] = args.d_ff or swiglu_width(shape["d_model"])
  big = shape["d_model"] * shape["seq_len"] * shape["batch"] * shape["layers"] > 4e6
  steps = args.steps or (2 if args.quick or big else 10)
  repeats = args.repeats or (2 if args.quick else 3 if big else 9)
  vocab = ByteTokenizer().vocab_size
  tokens = shape["batch"] * shape["seq_len"]
  batch = random_batch(shape["batch"], shape["seq_len"], vocab)

  if args.worker:  # devices_subprocess: the framework's step alone, on every device of this process
    fw, _ = framework_stepper("framework", model_config(**shape, arch=args.worker), batch)
    times, _ = interleaved([fw], steps, repeats)
    print(json.dumps(dict(step_s=statistics.median(times["framework"]), devices=jax.device_count())))
    return None

  rss = (not args.quick) if args.rss is None else args.rss
  devices = ((not args.quick) if args.devices is None else args.devices) and (os.cpu_count() or 1) > 1
  out = pathlib.Path(args.out or DEFAULT_OUT.with_name(
      "train_throughput.json" if args.shape == "tiny" else f"train_throughput_{args.shape}.json"))
  peak = matmul_peak(512 if args.quick else 1024, 3 if args.quick else 5)
  flops = train_flops(vocab=vocab, **shape)
  flops_gpt2 = train_flops(vocab=vocab, **dict(shape, d_ff=4 * shape["d_model"]), gated=False)

  torch_shape = {k: shape[k] for k in ("layers", "d_model", "heads", "seq_len", "batch")}
  sub = dict(steps=steps, repeats=max(repeats // 2, 2))
  peers = {}  # name -> list of runs (before and after the jax rounds)

  def run_peers():
    if args.torch:
      peers.setdefault("torch_nanogpt", []).append(torch_subprocess(
          dict(torch_shape, d_ff=4 * shape["d_model"]), vocab, "nanogpt", **sub))
      peers.setdefault("torch_ours", []).append(torch_subprocess(dict(torch_shape, d_ff=shape["d_ff"]), vocab, "ours", **sub))
    if devices:
      peers.setdefault("devices", []).append(devices_subprocess(shape, os.cpu_count(), **sub))
      peers.setdefault("devices_gpt2", []).append(devices_subprocess(shape, os.cpu_count(), **sub, arch="gpt2"))
    if args.nanogpt:
      iters = 10 + steps * sub["repeats"] + 10
      peers.setdefault("nanogpt", []).append(nanogpt_subprocess(pathlib.Path(args.nanogpt).resolve(), torch_shape, iters))

  # The jax arms, timed interleaved in this process; the others in their own processes before and after.
  run_peers()
  fw, run = framework_stepper("framework", model_config(**shape), batch)
  gpt2, _ = framework_stepper("framework_gpt2", model_config(**shape, arch="gpt2"), batch)
  bf16, _ = framework_stepper("framework_bf16", model_config(**shape, dtype="bfloat16"), batch)
  hand = hand_stepper("hand", run.config, batch, vocab)
  rolled, _ = framework_stepper("framework_rolled", model_config(**shape, scan_unroll=1), batch)
  times, first = interleaved([fw, gpt2, bf16, hand, rolled], steps, repeats)
  run_peers()
  med = {k: statistics.median(v) for k, v in times.items()}
  for name, runs in peers.items():
    med[name] = statistics.median(r["step_s"] for r in runs)
  same_round = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731

  # First-step (compile) time against depth, rolled (unroll=1) and fully unrolled, at the small shapes.
  compile_s, depths = {}, (1, 2) if args.quick else (2, 12)
  if not big:
    reuse = {("rolled", shape["layers"]): first["framework_rolled"]}
    if run.config.model.scan_unroll >= shape["layers"]:  # the per-backend default was fully unrolled (CPU)
      reuse[("unrolled", shape["layers"])] = first["framework"]
    for unroll_name, unroll in (("rolled", 1), ("unrolled", 10_000)):
      for n in depths:
        compile_s[f"{unroll_name}_{n}"] = reuse.get((unroll_name, n)) or first_step_seconds(
            model_config(**dict(shape, layers=n), scan_unroll=unroll), batch)
        if n == 1:  # one layer is the same program either way (the scan is unrolled when unroll >= length)
          reuse[("unrolled", 1)] = compile_s[f"{unroll_name}_{n}"]

  # Peak RSS of whole training runs (after the timing, so nothing else runs beside them).
  rss_runs = {}
  if rss:
    rss_steps = 200 if not big else 6
    for arch in ("ours", "gpt2"):
      rss_runs[f"lm_train_{arch}"] = lm_train_subprocess(shape, arch, rss_steps)

  result = dict(
      shape=dict(shape, vocab=vocab, tokens_per_step=tokens, name=args.shape),
      backend=jax.default_backend(), devices=jax.device_count(), machine=platform.machine(),
      cpu_count=os.cpu_count(), jax=jax.__version__, quick=args.quick, steps_per_round=steps,
      repeats=repeats, xla_flags=os.environ.get("XLA_FLAGS", ""),
      scan_unroll=run.config.model.scan_unroll, attention_impl=run.config.model.attention_impl,
      matmul_peak_flops=peak, train_flops_per_step=flops, train_flops_per_step_gpt2=flops_gpt2,
      step_ms=med["framework"] * 1e3, tokens_per_s=tokens / med["framework"],
      mfu=flops / med["framework"] / peak,
      gpt2_step_ms=med["framework_gpt2"] * 1e3, gpt2_tokens_per_s=tokens / med["framework_gpt2"],
      bf16_step_ms=med["framework_bf16"] * 1e3, bf16_over_float32=same_round("framework_bf16", "framework"),
      hand_step_ms=med["hand"] * 1e3, hand_tokens_per_s=tokens / med["hand"],
      hand_mfu=flops / med["hand"] / peak,
      overhead_ratio=same_round("framework", "hand"),
      overhead_ratios=[f / h for f, h in zip(times["framework"], times["hand"])],
      rolled_step_ms=med["framework_rolled"] * 1e3, rolled_over_unrolled=same_round("framework_rolled", "framework"),
      first_step_s=first, compile_s=compile_s, compile_depths=list(depths),
      step_ms_all={k: [t * 1e3 for t in v] for k, v in times.items()},
      peers={k: v for k, v in peers.items()}, rss=rss_runs,
  )
  if compile_s:
    result.update(rolled_compile_ratio=compile_s[f"rolled_{depths[1]}"] / compile_s[f"rolled_{depths[0]}"],
                  unrolled_compile_ratio=compile_s[f"unrolled_{depths[1]}"] / compile_s[f"unrolled_{depths[0]}"])
  if args.torch:
    import torch
    result.update(torch=torch.__version__, torch_step_ms=med["torch_ours"] * 1e3,
                  torch_nanogpt_step_ms=med["torch_nanogpt"] * 1e3,
                  framework_over_torch=med["framework"] / med["torch_ours"],
                  gpt2_over_torch_nanogpt=med["framework_gpt2"] / med["torch_nanogpt"])
  if "nanogpt" in med:
    result.update(nanogpt_step_ms=med["nanogpt"] * 1e3, gpt2_over_nanogpt=med["framework_gpt2"] / med["nanogpt"])
    if args.torch:
      result.update(torch_nanogpt_over_nanogpt=med["torch_nanogpt"] / med["nanogpt"])
  if "devices" in med:
    result.update(devices_step_ms=med["devices"] * 1e3, devices_over_framework=med["devices"] / med["framework"],
                  devices_gpt2_step_ms=med["devices_gpt2"] * 1e3)
    if "nanogpt" in med:
      result.update(devices_gpt2_over_nanogpt=med["devices_gpt2"] / med["nanogpt"])

  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")

  print(f"train_throughput --shape {args.shape}: {shape['layers']}L D={shape['d_model']} H={shape['heads']} "
        f"F={shape['d_ff']} (gpt2 {4 * shape['d_model']}) T={shape['seq_len']} B={shape['batch']} V={vocab}, "
        f"{jax.default_backend()} x{jax.device_count()}, {steps} steps x {repeats} rounds, "
        f"matmul peak {peak / 1e9:.1f} GFLOP/s")
  rows = [("framework (scan_unroll=%d)" % run.config.model.scan_unroll, "framework", flops),
          ("framework, nanoGPT architecture", "framework_gpt2", flops_gpt2),
          ("framework, bfloat16 compute", "framework_bf16", flops),
          ("framework rolled (unroll=1)", "framework_rolled", flops),
          ("hand-written jax+optax", "hand", flops),
          (f"framework, {os.cpu_count()} CPU devices (data mesh)", "devices", flops),
          (f"framework, nanoGPT arch., {os.cpu_count()} CPU devices", "devices_gpt2", flops_gpt2),
          ("torch eager, nanoGPT model+step", "torch_nanogpt", flops_gpt2),
          ("torch eager, our architecture", "torch_ours", flops),
          ("nanoGPT train.py (its log)", "nanogpt", flops_gpt2)]
  print(f"  {'arm':38s} {'ms/step':>8s} {'tok/s':>8s} {'MFU':>6s} {'RSS MB':>7s}")
  for label, key, f in rows:
    if key in med:
      rss_mb = statistics.median(r["rss_mb"] for r in peers[key]) if key in peers else float("nan")
      print(f"  {label:38s} {med[key] * 1e3:8.2f} {tokens / med[key]:8.0f} {f / med[key] / peak:6.1%} {rss_mb:7.0f}")
  print(f"  framework / hand (same rounds): {result['overhead_ratio']:.3f}; rolled / unrolled: "
        f"{result['rolled_over_unrolled']:.3f}; bf16 / float32: {result['bf16_over_float32']:.3f}")
  if args.torch:
    print(f"  framework / torch (ours): {result['framework_over_torch']:.3f}; framework gpt2 / torch nanoGPT: "
          f"{result['gpt2_over_torch_nanogpt']:.3f}")
  if "nanogpt" in med:
    if "devices_gpt2" in med:
      print(f"  framework gpt2 on {os.cpu_count()} CPU devices / nanoGPT train.py: {result['devices_gpt2_over_nanogpt']:.3f}")
    print(f"  framework gpt2 / nanoGPT train.py: {result['gpt2_over_nanogpt']:.3f}"
          + (f"; torch nanoGPT peer / nanoGPT train.py: {result['torch_nanogpt_over_nanogpt']:.3f}" if args.torch else ""))
  for name, r in rss_runs.items():
    print(f"  {name}: peak RSS {r['rss_mb']:.0f} MB, {r['steps']} steps in {r['wall_s']:.1f} s, "
          f"logged {r['tokens_per_s_logged'] or 0:.0f} tok/s")
  if compile_s:
    print("  first step incl. compile (s): " + ", ".join(f"{k} {v:.2f}" for k, v in compile_s.items())
          + f"; rolled {depths[1]}L/{depths[0]}L = {result['rolled_compile_ratio']:.2f}x, "
          f"unrolled = {result['unrolled_compile_ratio']:.2f}x")
  print(f"  wrote {out}")
  return result


if __name__ == "__main__":
  main()
