"""Data at scale: `lm prepare` throughput, then `lm train token_ntp:small` from the prepared directory.

  python benchmarks/data_pipeline.py [--gb 1.0] [--steps 40] [--workdir DIR] [--out FILE]

The corpus (at least --gb GB of real text, written once under --workdir as JSONL files): the embedded
sources (python-prose, python-code) plus every text file this machine has under the running Python's
prefix and /usr/share/doc (`.py .md .rst .txt .html .json .c .h`, `.gz` decompressed), deduplicated, then
repeated with a copy-number line prepended to every document (so each copy is a new document to the content
hash) until the size is reached. A second corpus is its first tenth, by bytes.

Measured, one process each, on both corpora:
  prepare   `lm prepare jsonl:DIR/*.jsonl:text --tokenizer bytes --workers 2`: MB/s of source text; also
            BPE (4096, 64 MiB sample) on the small corpus
  train     `lm train token_ntp:small --config.data.source=PREPARED` for --steps steps: seconds from process
            start to the end of the first step, peak RSS of the whole run (the child's own VmHWM), training
            tokens/s (steady state)
  pipeline  the training iterator alone (same batch shape, same process layout): host tokens/s
Goal: peak RSS of the big-corpus run within 20% of the small one's, pipeline tokens/s >= 10x training's.
"""

import argparse
import gzip
import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "data_pipeline.json"
_TEXT = (".py", ".md", ".rst", ".txt", ".html", ".json", ".c", ".h")

# The child reports the seconds to its first finished step and its own peak RSS.
_CHILD = """
import atexit, sys, time
t0 = time.time()
def _report():
  kb = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0]
  sys.stderr.write('\\nPEAK_RSS_KB %s\\n' % kb)
atexit.register(_report)
from lm.train import loop
real = loop.LogWindow.start_clock
def start_clock(self, first_step_seconds):
  sys.stderr.write('\\nFIRST_STEP_S %.3f\\n' % (time.time() - t0))
  return real(self, first_step_seconds)
loop.LogWindow.start_clock = start_clock
from lm import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def machine_texts():
  """Every text file under the Python prefix and /usr/share/doc, as bytes (gzip decompressed)."""
  roots = [pathlib.Path(sysconfig.get_paths()["stdlib"]), pathlib.Path(sys.prefix), pathlib.Path("/usr/share/doc")]
  seen = set()
  for root in roots:
    if not root.exists():
      continue
    for path in sorted(root.rglob("*")):
      name = path.name.lower()
      stem = name[:-3] if name.endswith(".gz") else name
      if not stem.endswith(_TEXT) or not path.is_file() or path.resolve() in seen:
        continue
      seen.add(path.resolve())
      try:
        data = path.read_bytes()
        data = gzip.decompress(data) if name.endswith(".gz") else data
        yield data.decode("utf-8")
      except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        continue


def build_corpus(directory: pathlib.Path, target_bytes: int) -> dict:
  """JSONL files of {"text": ...} records totalling >= target_bytes of text (see the module docstring)."""
  done = directory / "done.json"
  if done.exists():
    return json.loads(done.read_text())
  from lm.data import corpus
  directory.mkdir(parents=True, exist_ok=True)
  base, hashes = [], set()
  for doc in [d.decode("utf-8", "replace") for k in ("python-prose", "python-code")
              for d in corpus.stdlib_documents(k)] + list(machine_texts()):
    h = hash(doc)
    if doc.strip() and h not in hashes:
      hashes.add(h)
      base.append(doc)
  base_bytes = sum(len(d.encode()) for d in base)
  written, records, copy, shard = 0, 0, 0, 0
  out = open(directory / f"part-{shard:03d}.jsonl", "w")
  while written < target_bytes:
    for doc in base:
      text = f"[copy {copy}]\n{doc}"
      out.write(json.dumps({"text": text}) + "\n")
      written += len(text.encode())
      records += 1
      if records % 50000 == 0:
        out.close()
        shard += 1
        out = open(directory / f"part-{shard:03d}.jsonl", "w")
      if written >= target_bytes:
        break
    copy += 1
  out.close()
  info = dict(base_documents=len(base), base_bytes=base_bytes, copies=copy, records=records, text_bytes=written,
              files=shard + 1)
  done.write_text(json.dumps(info))
  return info


def small_corpus(big: pathlib.Path, directory: pathlib.Path, fraction: float = 0.1) -> dict:
  done = directory / "done.json"
  if done.exists():
    return json.loads(done.read_text())
  info = json.loads((big / "done.json").read_text())
  directory.mkdir(parents=True, exist_ok=True)
  want, written, records = int(info["text_bytes"] * fraction), 0, 0
  with open(directory / "part-000.jsonl", "w") as out:
    for path in sorted(big.glob("part-*.jsonl")):
      for line in open(path):
        if written >= want:
          break
        out.write(line)
        written += len(json.loads(line)["text"].encode())
        records += 1
  info = dict(records=records, text_bytes=written, files=1)
  done.write_text(json.dumps(info))
  return info


def run_lm(args, child: bool = False):
  cmd = [sys.executable, "-c", _CHILD, *args] if child else [sys.executable, "-m", "lm", *args]
  t = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  wall = time.perf_counter() - t
  if proc.returncode:
    raise RuntimeError(f"lm {' '.join(args[:3])} exited {proc.returncode}: {proc.stderr[-3000:]}")
  return proc, wall


def prepare(source_dir: pathlib.Path, out: pathlib.Path, tokenizer: str, text_bytes: int) -> dict:
  import shutil
  if out.exists():
    shutil.rmtree(out)
  args = ["prepare", f"jsonl:{source_dir}/*.jsonl:text", "--out", str(out), "--tokenizer", tokenizer,
          "--workers", "2"]
  if tokenizer == "bpe":
    args += ["--vocab-size", "4096"]
  _, wall = run_lm(args)
  manifest = json.loads((out / "manifest.json").read_text())
  return dict(seconds=wall, mb_per_s=text_bytes / 1e6 / wall, train_tokens=manifest["splits"]["train"]["tokens"],
              shards=len(manifest["splits"]["train"]["shards"]))


def train(prepared: pathlib.Path, workdir: pathlib.Path, steps: int) -> dict:
  import re
  import shutil
  if workdir.exists():
    shutil.rmtree(workdir)
  args = ["train", "token_ntp:small", "--workdir", str(workdir), f"--config.data.source={prepared}",
          f"--config.train.steps={steps}", f"--config.train.log_every={max(steps // 4, 1)}",
          "--config.train.eval_every=0", "--config.train.checkpoint_every=0", "--config.eval.max_batches=4",
          "--config.sample.max_new=0", "--config.train.trackers=jsonl"]
  proc, wall = run_lm(args, child=True)
  first = float(re.findall(r"^FIRST_STEP_S ([\d.]+)$", proc.stderr, re.M)[-1])
  rss = int(re.findall(r"^PEAK_RSS_KB (\d+)$", proc.stderr, re.M)[-1]) / 1024
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  tps = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r]
  return dict(first_step_s=first, peak_rss_mb=rss, train_tokens_per_s=tps[-1], wall_s=wall)


def pipeline_rate(prepared: pathlib.Path, batches: int = 300) -> float:
  """Host tokens/s of the training iterator alone (token_ntp:small's batch shape, one process)."""
  code = f"""
import time, sys
from lm import families
from lm.train import run as run_lib
config = families.load_config("token_ntp:small", ["data.source={prepared}"])
data = run_lib.load_data(config)
it = data.train_iterator(config.data.batch_size, seed=0, workers=config.data.workers, prefetch=config.data.prefetch)
next(it)
t = time.perf_counter()
for _ in range({batches}):
  b = next(it)
dt = time.perf_counter() - t
print(config.data.batch_size * config.data.seq_len * {batches} / dt)
"""
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
  if proc.returncode:
    raise RuntimeError(proc.stderr[-3000:])
  return float(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--gb", type=float, default=1.0)
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--workdir", default="/tmp/lm-data-bench")
  p.add_argument("--out", default=str(DEFAULT_OUT))
  args = p.parse_args(argv)
  work = pathlib.Path(args.workdir)
  big_info = build_corpus(work / "corpus-big", int(args.gb * 1e9))
  small_info = small_corpus(work / "corpus-big", work / "corpus-small")
  result = dict(date=time.strftime("%Y-%m-%d"), cpus=os.cpu_count(), corpus=big_info, small_corpus=small_info,
                steps=args.steps)
  for name, info in (("big", big_info), ("small", small_info)):
    arm = dict(text_bytes=info["text_bytes"])
    arm["prepare_bytes"] = prepare(work / f"corpus-{name}", work / f"prepared-{name}", "bytes", info["text_bytes"])
    if name == "small":
      arm["prepare_bpe"] = prepare(work / f"corpus-{name}", work / f"prepared-{name}-bpe", "bpe", info["text_bytes"])
    arm["train"] = train(work / f"prepared-{name}", work / f"run-{name}", args.steps)
    arm["pipeline_tokens_per_s"] = pipeline_rate(work / f"prepared-{name}")
    arm["pipeline_over_train"] = arm["pipeline_tokens_per_s"] / arm["train"]["train_tokens_per_s"]
    result[name] = arm
    print(name, json.dumps(arm), flush=True)
  result["rss_big_over_small"] = result["big"]["train"]["peak_rss_mb"] / result["small"]["train"]["peak_rss_mb"]
  result["first_step_big_over_small"] = result["big"]["train"]["first_step_s"] / result["small"]["train"]["first_step_s"]
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  print(f"\ndata_pipeline ({result['date']}, {result['cpus']} CPUs), token_ntp:small, {args.steps} steps")
  print(f"  {'corpus':8s} {'MB text':>8s} {'prep MB/s':>9s} {'first step s':>12s} {'peak RSS MB':>11s} "
        f"{'train tok/s':>11s} {'pipe tok/s':>10s} {'pipe/train':>10s}")
  for name in ("big", "small"):
    a = result[name]
    print(f"  {name:8s} {a['text_bytes'] / 1e6:8.0f} {a['prepare_bytes']['mb_per_s']:9.2f} "
          f"{a['train']['first_step_s']:12.1f} {a['train']['peak_rss_mb']:11.0f} "
          f"{a['train']['train_tokens_per_s']:11.0f} {a['pipeline_tokens_per_s']:10.0f} {a['pipeline_over_train']:10.1f}")
  print(f"  BPE 4096 prepare of the small corpus: {result['small']['prepare_bpe']['mb_per_s']:.2f} MB/s")
  print(f"  peak RSS big / small: {result['rss_big_over_small']:.3f} (goal <= 1.2); first step big / small: "
        f"{result['first_step_big_over_small']:.3f}")


if __name__ == "__main__":
  main()
