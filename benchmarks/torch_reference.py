"""A PyTorch CPU reference for the token-family training step, to compare against in the same process.

The same math as the framework's model: pre-norm RMSNorm, RoPE, causal attention
(`F.scaled_dot_product_attention`), SwiGLU, tied embeddings, mean cross-entropy, global-norm clipping and
AdamW. Eager PyTorch, as a researcher would write it; optional: used only when torch is installed
(`pip install torch`, the CPU build).
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
  a = p.parse_args()
  rng = np.random.default_rng(0)
  batch = dict(inputs=rng.integers(0, 256, (a.batch, a.seq_len)), targets=rng.integers(0, 256, (a.batch, a.seq_len)))
  step, state = make_torch_step(a.layers, a.d_model, a.heads, a.d_ff, a.vocab, a.seq_len)
  for _ in range(3):
    state, _ = step(state, batch)
  times = []
  for _ in range(a.repeats):
    t = time.perf_counter()
    for _ in range(a.steps):
      state, _ = step(state, batch)
    times.append((time.perf_counter() - t) / a.steps)
  ms = statistics.median(times) * 1e3
  print(json.dumps(dict(torch_step_ms=ms, torch_tokens_per_s=a.batch * a.seq_len / ms * 1e3, step_ms_all=[t * 1e3 for t in times])))


if __name__ == "__main__":
  main()
