"""Self-speculative greedy decoding against plain greedy decoding: forward passes per unit and wall time.

Run (on a run trained with an `mtp` objective, e.g. `lm train token_mtp:small --workdir runs/mtp_small`):
  python benchmarks/speculative.py --workdir runs/mtp_small
  python benchmarks/speculative.py --quick        # smoke mode: an untrained model, 4 short prompts
Writes JSON to --out (default benchmarks/results/speculative.json) and prints a table.

Prompts are the starts of held-out (val) segments of the run's own data. Both decoders run one prompt at a
time (batch 1, the latency setting speculative decoding is for), jitted once and timed after a warm-up, and
their outputs are compared unit for unit.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lm import families  # noqa: E402
from lm.decoding.generate import generate  # noqa: E402
from lm.families.token.speculative import draft_heads, speculative_greedy  # noqa: E402
from lm.train import run as run_lib  # noqa: E402

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "speculative.json"


def prompts_from(run, config, n: int, prompt_bytes: int) -> list[np.ndarray]:
  """The first `prompt_bytes` of val documents (of paragraphs within them), tokenized with a leading bos."""
  data = run.load_data()
  tok = run.tokenizer
  out = []
  for doc in data.splits["val"]:
    for paragraph in doc.split(b"\n\n"):
      if len(paragraph.strip()) >= prompt_bytes and len(out) < n:
        ids = tok.encode(paragraph.strip()[:prompt_bytes])
        out.append(np.concatenate([[tok.bos_id], ids]).astype(np.int32))
  if not out:
    raise SystemExit(f"no val document has {prompt_bytes} bytes for a prompt; lower --prompt-bytes")
  return out


def timed(fn):
  t0 = time.perf_counter()
  result = jax.block_until_ready(fn())
  return result, time.perf_counter() - t0


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", help="a trained run with mtp heads")
  p.add_argument("--prompts", type=int, default=20)
  p.add_argument("--prompt-bytes", type=int, default=32)
  p.add_argument("--max-new", type=int, default=64)
  p.add_argument("--quick", action="store_true", help="smoke mode: an untrained small token_mtp, 4 prompts")
  p.add_argument("--out", default=str(DEFAULT_OUT))
  args = p.parse_args(argv)
  if args.quick:
    args.prompts, args.max_new = min(args.prompts, 4), min(args.max_new, 24)
  if args.workdir is None:
    if not args.quick:
      p.error("give --workdir of a run trained with mtp heads, or --quick")
    config = families.load_config("token_mtp:tiny", ["model.d_model=64", "model.num_layers=2", "model.d_ff=128"])
    from lm.data.tokenizers import ByteTokenizer  # untrained: exercises the machinery only
    run = run_lib.build_run(config, ByteTokenizer())
    params = jax.tree.map(lambda x: x * 3.0, run.init(0).params)
  else:
    run, params = run_lib.restore_for_inference(args.workdir)
    config = run.config
  decoder = run.decode_model()
  if draft_heads(decoder) < 1:
    raise SystemExit(f"{args.workdir} was trained without mtp heads; nothing to draft with")
  prompts = prompts_from(run, config, args.prompts, args.prompt_bytes)
  eos = run.tokenizer.eos_id

  def plain(ids):
    return generate(decoder, params, jnp.asarray(ids)[None], jax.random.PRNGKey(0), max_new=args.max_new,
                    temperature=0.0, eos_id=eos)

  def spec(ids):
    return speculative_greedy(decoder, params, jnp.asarray(ids)[None], max_new=args.max_new, eos_id=eos)

  rows, same = [], 0
  for ids in prompts:
    timed(lambda: plain(ids))  # compiles once per prompt length (BPE prompts vary); time the second run
    timed(lambda: spec(ids))
    (plain_ids, plain_len), plain_s = timed(lambda: plain(ids))
    (spec_ids, spec_len, passes), spec_s = timed(lambda: spec(ids))
    same += int(np.array_equal(np.asarray(plain_ids), np.asarray(spec_ids)))
    units = int(plain_len[0])
    rows.append(dict(units=units, plain_passes=units, spec_passes=int(passes), plain_s=plain_s, spec_s=spec_s))
  units = sum(r["units"] for r in rows)
  result = dict(
      experiment=run.config.experiment, draft_units=draft_heads(decoder),
      prompts=len(rows), max_new=args.max_new, identical_outputs=same, units=units,
      plain_passes_per_unit=sum(r["plain_passes"] for r in rows) / units,
      spec_passes_per_unit=sum(r["spec_passes"] for r in rows) / units,
      accepted_units_per_pass=units / sum(r["spec_passes"] for r in rows),
      plain_ms_per_unit=1e3 * sum(r["plain_s"] for r in rows) / units,
      spec_ms_per_unit=1e3 * sum(r["spec_s"] for r in rows) / units,
      speedup_median=statistics.median(r["plain_s"] / r["spec_s"] for r in rows),
      machine=f"{platform.machine()} {jax.default_backend()} x{jax.device_count()}",
      date=time.strftime("%Y-%m-%d"), jax=jax.__version__)
  print(f"{'decoder':<14}{'passes/unit':>12}{'ms/unit':>10}")
  print(f"{'greedy':<14}{result['plain_passes_per_unit']:>12.3f}{result['plain_ms_per_unit']:>10.2f}")
  print(f"{'speculative':<14}{result['spec_passes_per_unit']:>12.3f}{result['spec_ms_per_unit']:>10.2f}")
  print(f"accepted units per pass {result['accepted_units_per_pass']:.2f}; identical outputs "
        f"{same}/{len(rows)}; median speedup {result['speedup_median']:.2f}x")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  return result


if __name__ == "__main__":
  main()
