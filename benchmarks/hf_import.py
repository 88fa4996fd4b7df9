"""`lm import hf` and `lm export hf` at a size where memory shows: time, peak RSS, and logits against transformers.

  python benchmarks/hf_import.py [--layers 16] [--d-model 1024] [--vocab 32000] [--out FILE]

A random Llama-shaped model (GQA 4:1, SwiGLU, untied head; ~245M params at the defaults) is built with
transformers and saved in bfloat16, sharded in 200 MB files with an index, beside a small BPE tokenizer. Each
step runs in its own process, which reports its own peak RSS (VmHWM):
  import   `workdirs.import_hf` onto float32 params: seconds, peak RSS above a baseline process (jax and lm
           imported) against the params' float32 bytes (one copy of the model is 1.0; the bar is under 2)
  parity   logits of 2 x 64 random tokens, ours (float32 params from the bfloat16 file) vs transformers (the
           same file loaded in float32): max abs difference
  export   `workdirs.export_hf` in float32, 1 GB shards: seconds, peak RSS
Needs `pip install -e '.[hf]'`. Prints a table and writes JSON (default benchmarks/results/hf_import.json).
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

BUILD = """
import sys, torch, transformers
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
d, layers, width, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tok = Tokenizer(models.BPE()); tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
text = open(sys.argv[5]).read().splitlines()
tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=1000, special_tokens=["<s>", "</s>"],
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
fast.save_pretrained(d)
torch.manual_seed(0)
c = transformers.LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=width * 11 // 4,
                             num_hidden_layers=layers, num_attention_heads=width // 64, num_key_value_heads=width // 256,
                             max_position_embeddings=2048, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
m = transformers.LlamaForCausalLM(c).to(torch.bfloat16)
m.save_pretrained(d, max_shard_size="200MB")
import json; print(json.dumps(dict(params=sum(p.numel() for p in m.parameters()))))
"""

PEAK = """
def peak_mb():
  for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
      return int(line.split()[1]) / 1024
"""

IMPORT = PEAK + """
import sys, time, json
t = time.time()
from lm.interop import workdirs
s = workdirs.import_hf(sys.argv[1], sys.argv[2])
print(json.dumps(dict(seconds=time.time() - t, peak_mb=peak_mb(), params=s["params"])))
"""

PARITY = PEAK + """
import sys, json, numpy as np, torch, transformers, jax.numpy as jnp
from lm.train import run as run_lib
run, params = run_lib.restore_for_inference(sys.argv[2])
ids = np.random.default_rng(0).integers(0, 1000, size=(2, 64))
ours = np.asarray(run.model.apply({"params": params}, {"inputs": jnp.asarray(ids, jnp.int32)}, with_heads=False).logits)
del params
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
with torch.no_grad():
  ref = m(torch.tensor(ids)).logits.numpy()
print(json.dumps(dict(max_abs=float(np.abs(ours[..., :ref.shape[-1]] - ref).max()), logit_scale=float(np.abs(ref).max()))))
"""

BASELINE = PEAK + """
import json, jax, jax.numpy as jnp
from lm.interop import workdirs
from lm.train import run
jnp.zeros(1).block_until_ready()
print(json.dumps(dict(peak_mb=peak_mb())))
"""

EXPORT = PEAK + """
import sys, time, json
t = time.time()
from lm.interop import workdirs
s = workdirs.export_hf(sys.argv[2], sys.argv[3], max_shard_bytes=1 << 30)
print(json.dumps(dict(seconds=time.time() - t, peak_mb=peak_mb(), files=len(s["files"]))))
"""


def child(code: str, *args) -> dict:
  proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HOME": str(pathlib.Path.home())})
  if proc.returncode:
    raise SystemExit(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--layers", type=int, default=16)
  p.add_argument("--d-model", type=int, default=1024)
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hf_import.json"))
  args = p.parse_args()
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="lm-hf-bench-"))
  t = time.time()
  built = child(BUILD, tmp / "hf", args.layers, args.d_model, args.vocab, ROOT / "README.md")
  params = int(built["params"])
  build_s = time.time() - t
  base = child(BASELINE)["peak_mb"]  # a process with jax and lm imported and a backend up
  imp = child(IMPORT, tmp / "hf", tmp / "run")
  parity = child(PARITY, tmp / "hf", tmp / "run")
  exp = child(EXPORT, tmp / "hf", tmp / "run", tmp / "export")
  f32_mb = params * 4 / 2**20
  result = dict(date=time.strftime("%Y-%m-%d %H:%M"), layers=args.layers, d_model=args.d_model, vocab=args.vocab,
                params=params, float32_mb=f32_mb, build_s=build_s, baseline_mb=base, import_=imp, parity=parity,
                export=exp, import_above_baseline_over_model=(imp["peak_mb"] - base) / f32_mb,
                export_above_baseline_over_model=(exp["peak_mb"] - base) / f32_mb)
  print(f"model: {params / 1e6:.1f}M params, {f32_mb:.0f} MB in float32 (saved bfloat16, sharded)")
  print(f"baseline (jax + lm imported, a backend up): {base:.0f} MB peak RSS")
  print(f"{'step':<8}{'seconds':>9}{'peak RSS MB':>13}{'(peak - baseline) / model':>27}")
  for name, r in (("import", imp), ("export", exp)):
    print(f"{name:<8}{r['seconds']:>9.1f}{r['peak_mb']:>13.0f}{(r['peak_mb'] - base) / f32_mb:>27.2f}")
  print(f"logits vs transformers: max abs {parity['max_abs']:.2e} (largest logit {parity['logit_scale']:.2f})")
  pathlib.Path(args.out).write_text(json.dumps(result, indent=2))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
