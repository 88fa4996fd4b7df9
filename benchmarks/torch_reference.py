"""PyTorch CPU references for the token-family training step (eager, float32), timed in their own process.

Two models, both written here:
  ours     the framework's math: pre-norm RMSNorm, RoPE, causal attention
           (`F.scaled_dot_product_attention`), SwiGLU, tied embeddings, mean cross-entropy, global-norm
           clipping and AdamW, as a researcher would write it in PyTorch;
  nanogpt  karpathy/nanoGPT's GPT-2 model and `train.py` step (LayerNorm without bias, fused qkv, GELU MLP,
           learned positions), the peer a new user compares against on a laptop CPU.
Optional: used only when torch is installed (`pip install torch==2.13.0`, the CPU build), never by `lm`.
"""

from __future__ import annotations

import numpy as np


def make_torch_step(layers: int, d_model: int, heads: int, d_ff: int, vocab: int, seq_len: int, lr: float = 1e-3,
                    clip: float = 1.0, weight_decay: float = 0.1, seed: int = 0):
  """Returns (step(state, batch) -> (state, loss), state); `batch` holds numpy `inputs` and `targets`."""
  import torch
  import torch.nn.functional as F

  torch.manual_seed(seed)
  E = d_model // heads

  class Block(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.n1, self.n2 = torch.nn.RMSNorm(d_model, eps=1e-6), torch.nn.RMSNorm(d_model, eps=1e-6)
      self.qkv = torch.nn.Linear(d_model, 3 * d_model, bias=False)
      self.out = torch.nn.Linear(d_model, d_model, bias=False)
      self.wi = torch.nn.Linear(d_model, 2 * d_ff, bias=False)
      self.wo = torch.nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x, cos, sin):
      B, T, _ = x.shape
      q, k, v = self.qkv(self.n1(x)).view(B, T, 3, heads, E).permute(2, 0, 3, 1, 4)
      q, k = rope(q, cos, sin), rope(k, cos, sin)
      a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + self.out(a.transpose(1, 2).reshape(B, T, d_model))
      gate, up = self.wi(self.n2(x)).chunk(2, dim=-1)
      return x + self.wo(F.silu(gate) * up)

  def rope(x, cos, sin):
    x1, x2 = x[..., : E // 2], x[..., E // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

  class Model(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = torch.nn.Embedding(vocab, d_model)
      self.blocks = torch.nn.ModuleList(Block() for _ in range(layers))
      self.norm = torch.nn.RMSNorm(d_model, eps=1e-6)
      for p in self.parameters():
        if p.dim() >= 2:
          torch.nn.init.normal_(p, std=0.02)

    def forward(self, ids):
      T = ids.shape[1]
      inv = 10_000.0 ** (-torch.arange(E // 2, dtype=torch.float32) / (E // 2))
      ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
      cos, sin = ang.cos(), ang.sin()
      x = self.embed(ids)
      for block in self.blocks:
        x = block(x, cos, sin)
      return self.norm(x) @ self.embed.weight.T

  model = Model()
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW([dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)],
                          lr=lr, betas=(0.9, 0.95), eps=1e-8)

  def step(state, batch):
    ids = torch.from_numpy(np.asarray(batch["inputs"], np.int64))
    targets = torch.from_numpy(np.asarray(batch["targets"], np.int64))
    logits = model(ids)
    loss = F.cross_entropy(logits.view(-1, vocab), targets.view(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return state, loss.item()

  return step, None


def make_nanogpt_step(layers: int, d_model: int, heads: int, d_ff: int, vocab: int, seq_len: int, lr: float = 1e-3,
                      clip: float = 1.0, weight_decay: float = 0.1, seed: int = 0):
  """nanoGPT's model and training step, as its `train.py` runs them on a CPU (`--compile=False`, float32).

  GPT-2 blocks: LayerNorm without bias, one fused qkv Linear, causal `scaled_dot_product_attention`, a GELU
  MLP of width `d_ff` (nanoGPT: 4 * d_model), learned absolute positions, the output head tied to the token
  embedding, no biases or dropout, N(0, 0.02) init with residual projections at 0.02 / sqrt(2 * layers).
  The step is nanoGPT's: set the learning rate, forward, cross-entropy, backward, global-norm clipping,
  AdamW (decay on matrices only, torch's default CPU implementation), `zero_grad(set_to_none=True)`, and
  `loss.item()` (its `--log_interval=1`). Written here from the architecture, not copied.
  """
  import math

  import torch
  import torch.nn.functional as F

  torch.manual_seed(seed)

  class Block(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.ln_1 = torch.nn.LayerNorm(d_model, bias=False)
      self.qkv = torch.nn.Linear(d_model, 3 * d_model, bias=False)
      self.attn_proj = torch.nn.Linear(d_model, d_model, bias=False)
      self.ln_2 = torch.nn.LayerNorm(d_model, bias=False)
      self.fc = torch.nn.Linear(d_model, d_ff, bias=False)
      self.mlp_proj = torch.nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
      B, T, D = x.shape
      q, k, v = self.qkv(self.ln_1(x)).split(D, dim=2)
      q, k, v = (t.view(B, T, heads, D // heads).transpose(1, 2) for t in (q, k, v))
      y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, D))
      return x + self.mlp_proj(F.gelu(self.fc(self.ln_2(x))))

  class GPT(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.wte = torch.nn.Embedding(vocab, d_model)
      self.wpe = torch.nn.Embedding(seq_len, d_model)
      self.blocks = torch.nn.ModuleList(Block() for _ in range(layers))
      self.ln_f = torch.nn.LayerNorm(d_model, bias=False)
      self.lm_head = torch.nn.Linear(d_model, vocab, bias=False)
      self.lm_head.weight = self.wte.weight
      for name, p in self.named_parameters():
        if p.dim() >= 2:
          std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
          torch.nn.init.normal_(p, std=std)

    def forward(self, ids, targets):
      pos = torch.arange(ids.shape[1], dtype=torch.long)
      x = self.wte(ids) + self.wpe(pos)
      for block in self.blocks:
        x = block(x)
      logits = self.lm_head(self.ln_f(x))
      return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

  model = GPT()
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW([dict(params=[p for p in params if p.dim() >= 2], weight_decay=weight_decay),
                           dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)],
                          lr=lr, betas=(0.9, 0.95), eps=1e-8)

  def step(state, batch):
    for group in opt.param_groups:
      group["lr"] = lr
    ids = torch.from_numpy(np.asarray(batch["inputs"], np.int64))
    targets = torch.from_numpy(np.asarray(batch["targets"], np.int64))
    loss = model(ids, targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return state, loss.item()

  return step, None


def main():
  """Standalone timing (`python benchmarks/torch_reference.py`): JSON line with ms/step and tokens/s.

  Run in its own process: in one process with XLA:CPU the two runtimes' thread pools fight (seen here:
  20x slower torch steps), so train_throughput.py times it in a subprocess.
  """
  import argparse
  import json
  import statistics
  import time
  p = argparse.ArgumentParser()
  for name, default in (("layers", 4), ("d_model", 128), ("heads", 4), ("d_ff", 344), ("seq_len", 64),
                        ("batch", 12), ("vocab", 259), ("steps", 10), ("repeats", 5)):
    p.add_argument(f"--{name}", type=int, default=default)
  p.add_argument("--arch", choices=("ours", "nanogpt"), default="ours")
  a = p.parse_args()
  rng = np.random.default_rng(0)
  batch = dict(inputs=rng.integers(0, 256, (a.batch, a.seq_len)), targets=rng.integers(0, 256, (a.batch, a.seq_len)))
  make = make_nanogpt_step if a.arch == "nanogpt" else make_torch_step
  step, state = make(a.layers, a.d_model, a.heads, a.d_ff, a.vocab, a.seq_len)
  for _ in range(3):
    state, _ = step(state, batch)
  times = []
  for _ in range(a.repeats):
    t = time.perf_counter()
    for _ in range(a.steps):
      state, _ = step(state, batch)
    times.append((time.perf_counter() - t) / a.steps)
  ms = statistics.median(times) * 1e3
  import resource
  print(json.dumps(dict(torch_step_ms=ms, torch_tokens_per_s=a.batch * a.seq_len / ms * 1e3, step_ms_all=[t * 1e3 for t in times],
                        max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


if __name__ == "__main__":
  main()
