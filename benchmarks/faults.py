"""Fault campaigns against `lm train token_ntp:tiny` (issue 34): SIGKILLs with resume, flipped bytes in a
checkpoint, and a census of the lines each bad input prints.

Run:
  python benchmarks/faults.py                                   # all three campaigns at their default sizes
  python benchmarks/faults.py --campaigns kill --kills 30 --kill-steps 120
  python benchmarks/faults.py --campaigns flip --flips 50 --bytes 64
Writes JSON to --out (default benchmarks/results/faults.json) and prints one table per campaign.

kill    `lm train` SIGKILLed (its process group) --kills times, each time rerun to resume; a kill lands during
        setup, a random moment of a random step, or the moment an orbax `*.orbax-checkpoint-tmp*` directory
        appears (a save in flight). The last run finishes; its params must be bit-equal to an uninterrupted
        run of the same command.
flip    --flips trials, each on a fresh copy of one trained workdir: --bytes random bytes of one file of the
        newest step XORed (an array data file with probability --array-share, weighted by size, else any other
        file of the step), then `lm eval COPY` and, on a second copy, `lm train` resumed for 2 more steps.
        eval:  caught   a warning naming the step and the previous step's bpb, or exit != 0 with one error line
               harmless no warning and the undamaged bpb, bit for bit
        train: caught   a warning naming the step and a resume from an older step, or exit != 0 with one error line
               harmless resumed from the damaged step and final params bit-equal to the undamaged resume
        anything else is missed; a trial is missed if either is, else caught if either is, else harmless.
errors  each bad input in `error_cases` as a subprocess: pass = exit != 0 and exactly one line on the terminal
        (stdout and stderr) that is not noise (`NOISE`), and it starts with `error:`; some cases check more.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import protocol  # noqa: E402  # benchmarks/protocol.py, beside this file

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "faults.json"
EXPERIMENT = "token_ntp:tiny"
LM = [sys.executable, "-m", "lm"]
# Lines that are not the program's own: libtpu (the `tpu` extra) prints these on CPU hosts (audit, section 2),
# and absl warnings. Blank lines are not counted either.
NOISE = {
    "libtpu: logging before InitGoogle": r"^WARNING: Logging before InitGoogle",
    "libtpu: E0000 lines": r"^E0000",
    "libtpu: host bounds": r"^Failed to find host bounds",
    "libtpu: source location trace header": r"^=== Source Location Trace",
    "libtpu: source location trace entries (path.cc:N)": r"^\S+\.(cc|h):\d+$",
    "absl WARNING (python logging)": r"^WARNING:absl:",
    "absl WARNING (glog format)": r"^W\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ",
}
_NOISE = [re.compile(p) for p in NOISE.values()]
STEP = re.compile(r"^step (\d+)/(\d+)")
RESUMED = re.compile(r"resumed from step (\d+)")
TMP = "orbax-checkpoint-tmp"
# Where a kill lands, and how often: the audit's mix (most in training, a third at a save, some in setup).
KILL_MODES = {"setup": 0.15, "step": 0.5, "save": 0.35}


def noise(line: str) -> bool:
  return not line.strip() or any(p.search(line) for p in _NOISE)


def terminal(lines: list[str]) -> dict:
  """The lines a user reads: `error:` lines, other lines, and the lines themselves (noise dropped)."""
  kept = [line for line in lines if not noise(line)]
  errors = [line for line in kept if line.startswith("error:")]
  return dict(error_lines=len(errors), other_lines=len(kept) - len(errors), noise_lines=len(lines) - len(kept),
              lines=kept if len(kept) <= 12 else kept[:6] + ["..."] + kept[-6:])


def one_error_line(rc, lines: list[str]) -> bool:
  """Exit != 0 and the terminal's only line is one `error:` line."""
  kept = [line for line in lines if not noise(line)]
  return rc not in (0, None) and len(kept) == 1 and kept[0].startswith("error:")


def failed_in_one_line(rc, lines: list[str]) -> bool:
  """Exit != 0 ending in one `error:` line, no traceback: how a run that had started (and printed progress)
  stops."""
  kept = [line for line in lines if not noise(line)]
  return (rc not in (0, None) and bool(kept) and kept[-1].startswith("error:")
          and sum(line.startswith("error:") for line in kept) == 1
          and not any(line.startswith(("Traceback", "Exception ignored")) for line in kept))


class Proc:
  """A subprocess in its own process group (so a kill takes its children too), stdout and stderr merged,
  lines collected as they come."""

  def __init__(self, cmd, cwd=None):
    self.cmd = cmd
    self.start = time.monotonic()
    self.p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    self.lines: list[tuple[float, str]] = []
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self):
    for raw in iter(self.p.stdout.readline, b""):
      self.lines.append((time.monotonic() - self.start, raw.decode("utf-8", "replace").rstrip("\r\n")))

  @property
  def pid(self) -> int:
    return self.p.pid

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def running(self) -> bool:
    return self.p.poll() is None

  def kill(self):
    try:
      os.killpg(self.p.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass

  def wait(self, timeout: float) -> int | None:
    """Exit code, or None after killing it at `timeout` seconds."""
    try:
      rc = self.p.wait(timeout=max(timeout - self.elapsed(), 0.1))
    except subprocess.TimeoutExpired:
      self.kill()
      self.p.wait()
      rc = None
    self.reader.join(10)
    return rc

  def texts(self) -> list[str]:
    return [t for _, t in self.lines]

  def last(self, pattern: re.Pattern) -> re.Match | None:
    for _, t in reversed(self.lines):
      if m := pattern.search(t):
        return m
    return None


def _relative(path) -> str:
  """`path` relative to the checkout where it lies inside it: no machine's paths in a recorded JSON."""
  try:
    return str(pathlib.Path(path).resolve().relative_to(protocol.ROOT))
  except ValueError:
    return str(path)


def run(cmd, timeout: float, cwd=None) -> dict:
  p = Proc(cmd, cwd)
  rc = p.wait(timeout)
  return dict(rc=rc, timed_out=rc is None, seconds=round(p.elapsed(), 2), lines=p.texts())


def show(cmd) -> str:
  return shlex.join(os.fsdecode(c) if isinstance(c, bytes) else str(c) for c in cmd).replace(sys.executable, "python")


def train_cmd(workdir, overrides, steps: int) -> list:
  return [*LM, "train", EXPERIMENT, "--workdir", str(workdir), *overrides, f"--config.train.steps={steps}"]


def finished_steps(workdir) -> list[int]:
  path = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.exists() else []


def tmp_dirs(workdir) -> set[tuple[str, int]]:
  """(name, inode) of orbax's unfinished step directories: a name can come back after a kill, the inode not."""
  path = pathlib.Path(workdir) / "checkpoints"
  try:
    return {(e.name, e.inode()) for e in os.scandir(path) if TMP in e.name}
  except FileNotFoundError:
    return set()


def load_params(workdir) -> dict[str, np.ndarray]:
  """The params of the newest good step, as `lm.load` restores them, by leaf path."""
  import logging  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel  # the campaigns' subprocesses need no jax here
  import lm  # pylint: disable=import-outside-toplevel
  logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's "directory is read only" on every load
  params = lm.load(str(workdir)).params
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}


def compare(a: dict | None, b: dict | None) -> dict:
  if a is None or b is None:
    return dict(bit_equal=False, max_abs_diff=None, why="no params")
  if a.keys() != b.keys():
    return dict(bit_equal=False, max_abs_diff=None, why=f"leaves differ: {sorted(set(a) ^ set(b))[:4]}")
  equal, diff = True, 0.0
  for k in a:
    x, y = a[k], b[k]
    if x.shape != y.shape or x.dtype != y.dtype:
      return dict(bit_equal=False, max_abs_diff=None, why=f"{k}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
    equal &= x.tobytes() == y.tobytes()
    d = np.abs(x.astype(np.float64) - y.astype(np.float64))
    diff = max(diff, float(np.nanmax(d)) if d.size else 0.0, float("inf") if np.isnan(d).any() else 0.0)
  return dict(bit_equal=bool(equal), max_abs_diff=diff)


def last_records(workdir) -> dict:
  """The final loss and final val bpb from `metrics.jsonl` (the last record of each)."""
  out = {}
  path = pathlib.Path(workdir) / "metrics.jsonl"
  for line in path.read_text().splitlines() if path.exists() else []:
    rec = json.loads(line)
    if "loss" in rec:
      out["loss"], out["loss_step"] = rec["loss"], rec["step"]
    if "final_val_bpb" in rec:
      out["final_val_bpb"] = rec["final_val_bpb"]
  return out


# ---------------------------------------------------------------------------------------------------------
# kill


def kill_campaign(args, tmp: pathlib.Path) -> dict:
  overrides = ["--config.train.checkpoint_every=3", "--config.train.log_every=1", "--config.sample.max_new=0"]
  ref, work = tmp / "kill_reference", tmp / "kill_run"
  print(f"kill: reference run ({args.kill_steps} steps, uninterrupted)", flush=True)
  p = Proc(train_cmd(ref, overrides, args.kill_steps))
  ref_rc = p.wait(args.timeout)
  times = [t for t, line in p.lines if STEP.search(line)]
  step_time = float(np.median(np.diff(times))) if len(times) > 2 else 0.2
  if ref_rc != 0:
    raise SystemExit(f"kill: the reference run failed (exit {ref_rc}):\n" + "\n".join(p.texts()[-20:]))

  rng = random.Random(args.seed)
  kills, cmd = [], train_cmd(work, overrides, args.kill_steps)
  for i in range(args.kills):
    # Every draw before the process starts, so the sequence does not depend on timing.
    mode = rng.choices(list(KILL_MODES), weights=list(KILL_MODES.values()))[0]
    setup_delay, step_offset, fraction = rng.uniform(1.0, 8.0), rng.randint(1, 6), rng.random()
    before = tmp_dirs(work)
    p = Proc(cmd)
    deadline, target, killed = p.start + args.timeout, None, False
    while p.running() and time.monotonic() < deadline:
      steps = [int(m.group(1)) for _, line in p.lines if (m := STEP.search(line))]
      if mode == "setup" and p.elapsed() >= setup_delay:
        break
      if mode == "step" and steps:
        target = target or steps[0] - 1 + step_offset
        if steps[-1] >= target:
          time.sleep(fraction * step_time)
          break
      if mode == "save" and steps and tmp_dirs(work) - before:
        break
      time.sleep(0.001 if mode == "save" and steps else 0.02)
    t = p.elapsed()
    if p.running():
      p.kill()
      killed = True
    rc = p.wait(30)
    new_tmp = sorted(name for name, _ in tmp_dirs(work) - before)
    started = p.last(RESUMED)
    logged = [int(m.group(1)) for _, line in p.lines if (m := STEP.search(line))]
    kills.append(dict(kill=i, mode=mode, seconds=round(t, 3), killed=killed, rc=rc,
                      started_from=int(started.group(1)) if started else None,
                      known_start=bool(started or logged),
                      last_logged_step=logged[-1] if logged else None,
                      # a tmp dir this attempt made (not one left by the kill before) is a save cut short
                      save_in_flight=bool(new_tmp and logged), tmp_dirs=new_tmp,
                      newest_after=max(finished_steps(work), default=None), resumed_from=None))
    if not killed:  # finished by itself: no step left to kill in
      print(f"kill: the run finished before kill {i} (exit {rc}); {i} kills done", flush=True)
      break

  final = Proc(cmd)
  final_rc = final.wait(args.timeout)
  # A kill's resume is the next attempt that got as far as restoring (one killed in setup before that says
  # nothing); an attempt that trained without "resumed from" started fresh (None, as `newest_after` is then).
  starts = [(k["started_from"], k["known_start"]) for k in kills[1:]]
  starts.append((int(m.group(1)) if (m := final.last(RESUMED)) else None, True))
  for i, k in enumerate(kills):
    k["resumed_from"] = next((step for step, known in starts[i:] if known), None)
  same = compare(load_params(ref), load_params(work)) if final_rc == 0 else compare(None, None)
  result = dict(kills_requested=args.kills, kills=len([k for k in kills if k["killed"]]),
                in_flight=sum(k["save_in_flight"] for k in kills), reference_rc=ref_rc, final_rc=final_rc,
                seconds_per_step=step_time, reference=last_records(ref), final=last_records(work),
                resumed_newest=sum(k["resumed_from"] == k["newest_after"] for k in kills), **same,
                per_kill=kills, final_tail=final.texts()[-3:])
  print(f"\n{'kill':>4} {'mode':<6}{'t (s)':>8} {'last step':>9} {'in flight':>10} {'newest':>7} {'resumed':>8}")
  for k in kills:
    print(f"{k['kill']:>4} {k['mode']:<6}{k['seconds']:>8.2f} {str(k['last_logged_step']):>9} "
          f"{str(k['save_in_flight']):>10} {str(k['newest_after']):>7} {str(k['resumed_from']):>8}")
  print(f"kill: {result['kills']} kills ({result['in_flight']} with a save in flight), {result['resumed_newest']} "
        f"resumed from the newest finished step; final exit {final_rc}; params bit-equal to the uninterrupted "
        f"run: {same['bit_equal']} (max |diff| {same['max_abs_diff']}); loss {result['final'].get('loss')} vs "
        f"{result['reference'].get('loss')}\n", flush=True)
  return result


# ---------------------------------------------------------------------------------------------------------
# flip

FLIP_OVERRIDES = ["--config.train.checkpoint_every=3", "--config.train.log_every=1", "--config.sample.max_new=0",
                  "--config.eval.max_batches=8"]
FLIP_STEPS = 8  # saves 3, 6, 8


def base_workdir(args, tmp: pathlib.Path) -> pathlib.Path:
  """One trained tiny workdir with three saved steps, shared by the flip and error campaigns (never changed)."""
  base = tmp / "base"
  if not finished_steps(base):
    print(f"training the base workdir ({FLIP_STEPS} steps)", flush=True)
    r = run(train_cmd(base, FLIP_OVERRIDES, FLIP_STEPS), args.timeout)
    if r["rc"] != 0 or len(finished_steps(base)) < 2:
      raise SystemExit(f"the base run failed (exit {r['rc']}):\n" + "\n".join(r["lines"][-20:]))
  return base


def evaluate(workdir, timeout) -> dict:
  (workdir / "eval_val.json").unlink(missing_ok=True)  # the copy's own, from training
  r = run([*LM, "eval", str(workdir)], timeout)
  path = workdir / "eval_val.json"
  rec = json.loads(path.read_text()) if path.exists() and r["rc"] == 0 else {}
  return dict(r, bpb=rec.get("bpb"), step=rec.get("step"))


def resume(workdir, steps: int, timeout) -> dict:
  r = run(train_cmd(workdir, FLIP_OVERRIDES, steps), timeout)
  m = [RESUMED.search(line) for line in r["lines"]]
  resumed = [int(x.group(1)) for x in m if x]
  return dict(r, resumed_from=resumed[-1] if resumed else None)


def warned(lines: list[str], step: int) -> bool:
  """A warning that names `step` (the damaged one)."""
  return any(line.lower().startswith("warning") and re.search(rf"\bstep {step}\b", line) for line in lines)


def flip_bytes(step_dir: pathlib.Path, rng: random.Random, n: int, array_share: float) -> dict:
  files = sorted(p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0)
  # ocdbt keeps every array's bytes (params and optimizer state) in `d/` data files; the rest is metadata.
  arrays = ([p for p in files if "d" in p.relative_to(step_dir).parts[:-1]]
            or [max(files, key=lambda p: p.stat().st_size)])
  others = [p for p in files if p not in arrays]
  if rng.random() < array_share or not others:
    target = rng.choices(arrays, weights=[p.stat().st_size for p in arrays])[0]
  else:
    target = rng.choice(others)
  data = bytearray(target.read_bytes())
  offsets = sorted(rng.sample(range(len(data)), min(n, len(data))))
  masks = [rng.randrange(1, 256) for _ in offsets]
  for o, m in zip(offsets, masks):
    data[o] ^= m
  target.write_bytes(bytes(data))
  return dict(file=str(target.relative_to(step_dir)), size=len(data), array_file=target in arrays,
              offsets=offsets[:16], masks=masks[:16])


def eval_outcome(e: dict, step: int, bpb_ref: float, bpb_prev: float) -> tuple[str, str]:
  if e["rc"] != 0:
    if failed_in_one_line(e["rc"], e["lines"]):
      return "caught", "refused in one error line"
    return "missed", f"exit {e['rc']} with {terminal(e['lines'])['other_lines']} other lines"
  if warned(e["lines"], step):
    if e["bpb"] == bpb_prev:
      return "caught", "warned; scored the previous step"
    return "missed", f"warned but bpb {e['bpb']} is not the previous step's {bpb_prev}"
  if e["bpb"] == bpb_ref:
    return "harmless", "bpb bit-identical"
  return "missed", f"bpb {e['bpb']} instead of {bpb_ref}, no warning"


def train_outcome(t: dict, step: int, same_new: dict, same_prev: dict) -> tuple[str, str]:
  if t["rc"] != 0:
    if failed_in_one_line(t["rc"], t["lines"]):
      return "caught", "refused in one error line"
    return "missed", f"exit {t['rc']}, {terminal(t['lines'])['error_lines']} error lines, not one line"
  if t["resumed_from"] is not None and t["resumed_from"] < step and warned(t["lines"], step):
    extra = "" if same_prev["bit_equal"] else f"; but params differ from the previous step's resume ({same_prev})"
    return "caught", f"warned; resumed from step {t['resumed_from']}{extra}"
  if t["resumed_from"] == step and not warned(t["lines"], step):
    if same_new["bit_equal"]:
      return "harmless", "resumed from the step; params bit-equal"
    return "missed", f"trained on the damaged step (max |diff| {same_new['max_abs_diff']})"
  return "missed", f"resumed from {t['resumed_from']}, warning: {warned(t['lines'], step)}"


def flip_campaign(args, tmp: pathlib.Path) -> dict:
  base = base_workdir(args, tmp)
  steps = finished_steps(base)
  step, prev = steps[-1], steps[-2]
  more = step + 2

  def copy(name):
    target = tmp / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target)
    return target

  print("flip: undamaged references (eval and resume of the newest step and of the one before)", flush=True)
  ref_eval = evaluate(copy("flip_ref"), args.timeout)
  ref_train = resume(tmp / "flip_ref", more, args.timeout)
  prev_dir = copy("flip_prev")
  shutil.rmtree(prev_dir / "checkpoints" / str(step))
  prev_eval = evaluate(prev_dir, args.timeout)
  prev_train = resume(prev_dir, more, args.timeout)
  for name, r in (("eval", ref_eval), ("resume", ref_train), ("previous eval", prev_eval),
                  ("previous resume", prev_train)):
    if r["rc"] != 0:
      raise SystemExit(f"flip: the undamaged {name} failed (exit {r['rc']}):\n" + "\n".join(r["lines"][-20:]))
  params_new, params_prev = load_params(tmp / "flip_ref"), load_params(prev_dir)
  bpb_ref, bpb_prev = ref_eval["bpb"], prev_eval["bpb"]

  rng = random.Random(args.seed)
  trials = []
  print(f"\n{'trial':>5} {'file':<52}{'eval':>9}{'train':>9}{'class':>9}  why", flush=True)
  for i in range(args.flips):
    damaged = copy("flip_trial")
    flip = flip_bytes(damaged / "checkpoints" / str(step), rng, args.bytes, args.array_share)
    shutil.rmtree(tmp / "flip_trial_train", ignore_errors=True)
    shutil.copytree(damaged, tmp / "flip_trial_train")
    e = evaluate(damaged, args.timeout)
    t = resume(tmp / "flip_trial_train", more, args.timeout)
    params = load_params(tmp / "flip_trial_train") if t["rc"] == 0 else None
    same_new, same_prev = compare(params, params_new), compare(params, params_prev)
    eo, ew = eval_outcome(e, step, bpb_ref, bpb_prev)
    to, tw = train_outcome(t, step, same_new, same_prev)
    kind = "missed" if "missed" in (eo, to) else "caught" if "caught" in (eo, to) else "harmless"
    trials.append(dict(trial=i, **flip, kind=kind,
                       eval=dict(outcome=eo, why=ew, rc=e["rc"], bpb=e["bpb"], step=e["step"],
                                 warned=warned(e["lines"], step), seconds=e["seconds"], **terminal(e["lines"])),
                       train=dict(outcome=to, why=tw, rc=t["rc"], resumed_from=t["resumed_from"],
                                  warned=warned(t["lines"], step), seconds=t["seconds"],
                                  params_vs_undamaged=same_new, params_vs_previous=same_prev,
                                  **terminal(t["lines"]))))
    why = ew if eo == kind else tw
    print(f"{i:>5} {flip['file'][-52:]:<52}{eo:>9}{to:>9}{kind:>9}  {why[:90]}", flush=True)
  counts = {k: sum(t["kind"] == k for t in trials) for k in ("caught", "harmless", "missed")}
  result = dict(step=step, previous=prev, resumed_to=more, bpb_undamaged=bpb_ref, bpb_previous=bpb_prev,
                **counts, missed_rate=protocol.rate(counts["missed"], len(trials)) if trials else None,
                eval_missed=sum(t["eval"]["outcome"] == "missed" for t in trials),
                train_missed=sum(t["train"]["outcome"] == "missed" for t in trials), trials=trials)
  print(f"flip: {len(trials)} trials of {args.bytes} byte(s) in step {step}: caught {counts['caught']}, harmless "
        f"{counts['harmless']}, missed {counts['missed']} (eval missed {result['eval_missed']}, train missed "
        f"{result['train_missed']})\n", flush=True)
  return result


# ---------------------------------------------------------------------------------------------------------
# errors


def corpus_text(seed: int, paragraphs: int = 1000) -> str:
  """Distinct paragraphs of README words (identical ones would hash into one split)."""
  words = (protocol.ROOT / "README.md").read_text().split()
  r = random.Random(seed)
  return "\n\n".join(" ".join(r.choice(words) for _ in range(r.randint(20, 80))) for _ in range(paragraphs)) + "\n"


def hf_dir(base: pathlib.Path, target: pathlib.Path, timeout) -> pathlib.Path:
  """A Hugging Face directory of the base run (`lm export hf`) with a byte-level tokenizer.json beside it
  (bytes tokenizers have no HF form)."""
  # pylint: disable-next=import-outside-toplevel  # only this case needs it
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  r = run([*LM, "export", "hf", str(base), "--out", str(target)], timeout)
  if r["rc"] != 0:
    raise RuntimeError("lm export hf failed: " + " | ".join(r["lines"][-3:]))
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(["a small text"], trainers.BpeTrainer(
      vocab_size=258, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  tok.save(str(target / "tokenizer.json"))
  config = json.loads((target / "config.json").read_text())
  config["bos_token_id"] = config["eos_token_id"] = tok.token_to_id("<|endoftext|>")
  (target / "config.json").write_text(json.dumps(config, indent=2))
  return target


def tensor_names(path: pathlib.Path) -> list[str]:
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    return sorted(k for k in json.loads(f.read(n)) if k != "__metadata__")


def error_cases(args, tmp: pathlib.Path) -> list[dict]:
  """Each case: name, cmd, cwd, and optionally check(result) -> (ok, detail) beyond the one-line rule. Inputs
  are built here; a case whose input cannot be built is reported with `setup_error`."""
  d = tmp / "errors"
  d.mkdir(parents=True, exist_ok=True)
  base = base_workdir(args, tmp)
  text = corpus_text(args.seed)
  (d / "corpus.txt").write_text(text)
  (d / "empty.txt").write_text("")
  (d / "random.bin").write_bytes(np.random.default_rng(args.seed).bytes(200_000))
  np.save(d / "array.npy", np.random.default_rng(args.seed).standard_normal(400_000))
  packed = gzip.compress(text.encode())
  (d / "truncated.txt.gz").write_bytes(packed[:len(packed) // 2])
  lines = [json.dumps({"text": p}) for p in text.split("\n\n")]
  lines[49] = '{"text": "an unterminated string'
  (d / "badline.jsonl").write_text("\n".join(lines) + "\n")

  def train(name, *overrides):
    return [*LM, "train", EXPERIMENT, "--workdir", str(d / f"w_{name}"), "--config.train.steps=2",
            "--config.sample.max_new=0", *overrides]

  cases = [
      dict(name="empty file", cmd=train("empty", f"--config.data.source={d / 'empty.txt'}")),
      dict(name="random bytes .bin", cmd=train("bin", f"--config.data.source={d / 'random.bin'}")),
      dict(name=".npy array", cmd=train("npy", f"--config.data.source={d / 'array.npy'}")),
      dict(name="truncated .txt.gz", cmd=train("gz", f"--config.data.source={d / 'truncated.txt.gz'}")),
      dict(name="jsonl bad line", cmd=train("jsonl", f"--config.data.source=jsonl:{d / 'badline.jsonl'}:text")),
      dict(name="keep_checkpoints=0", cmd=train("keep0", "--config.train.keep_checkpoints=0")),
      dict(name="checkpoint_every=-1", cmd=train("every", "--config.train.checkpoint_every=-1")),
      dict(name="optim.lr=-1", cmd=train("lr", "--config.optim.lr=-1")),
      dict(name="sample --max-new 0", cmd=[*LM, "sample", str(base), "--max-new", "0"]),
      dict(name="sample --max-new -3", cmd=[*LM, "sample", str(base), "--max-new", "-3"]),
      dict(name="sample invalid UTF-8 prompt",
           cmd=[*LM, "sample", str(base), "--prompt", b"abc\xff\xfedef", "--max-new", "5"]),
  ]

  # Prepared data: `lm prepare` once, then damaged copies.
  prep = d / "prepared"
  r = run([*LM, "prepare", str(d / "corpus.txt"), "--out", str(prep), "--tokenizer", "bytes", "--workers", "0"],
          args.timeout)
  no_split, short = d / "prepared_no_train_split", d / "prepared_short_lengths"
  setup = None if r["rc"] == 0 else "lm prepare failed: " + " | ".join(r["lines"][-2:])
  if setup is None:
    shutil.copytree(prep, no_split)
    manifest = json.loads((no_split / "manifest.json").read_text())
    del manifest["splits"]["train"]
    (no_split / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.copytree(prep, short)
    lengths = short / json.loads((short / "manifest.json").read_text()).get("train_lengths", "train.lengths")
    lengths.write_bytes(lengths.read_bytes()[:lengths.stat().st_size // 2])
  cases += [dict(name="prepared: no splits.train", cmd=train("prep1", f"--config.data.source={no_split}"),
                 setup_error=setup),
            dict(name="prepared: truncated lengths", cmd=train("prep2", f"--config.data.source={short}"),
                 setup_error=setup)]

  # Safetensors indexes naming files outside their directory.
  setup = None
  try:
    src = hf_dir(base, d / "hf", args.timeout)
    names = tensor_names(src / "model.safetensors")
    for name, where in (("hf_passwd", None), ("hf_dotdot", "../outside.safetensors")):
      target = d / name
      target.mkdir()
      for f in ("config.json", "tokenizer.json"):
        shutil.copy(src / f, target / f)
      if where is None:  # one tensor in /etc/passwd, the rest where they belong
        shutil.copy(src / "model.safetensors", target / "model.safetensors")
        weight_map = {n: "model.safetensors" for n in names} | {names[0]: "/etc/passwd"}
      else:  # every tensor from a valid file beside the directory
        shutil.copy(src / "model.safetensors", d / "outside.safetensors")
        weight_map = {n: where for n in names}
      (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  except Exception as e:  # pylint: disable=broad-except  # reported as the cases' setup error
    setup = f"building the HF directory failed: {type(e).__name__}: {e}"
  cases += [dict(name="hf index names /etc/passwd",
                 cmd=[*LM, "import", "hf", str(d / "hf_passwd"), "--workdir", str(d / "w_hf1")], setup_error=setup),
            dict(name="hf index names ../ file",
                 cmd=[*LM, "import", "hf", str(d / "hf_dotdot"), "--workdir", str(d / "w_hf2")], setup_error=setup)]

  # A downloaded workdir whose saved config names a module of its own as the family: trained here with the
  # module named on the command line (the user's own choice, which keeps working), so that every checksum
  # and file in it is as a real run writes them; then the marker is removed and `lm eval` must not import it.
  where = d / "family"
  where.mkdir()
  marker = where / "MARKER"
  module = "faults_marker_family"
  (where / f"{module}.py").write_text(
      f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported\\n')\n"
      "from lm.families.token import FAMILY  # noqa: F401  # works like the token family: nothing else shows\n")
  r = run([*LM, "train", EXPERIMENT, "--workdir", "run", f"--config.model.family={module}",
           "--config.train.steps=2", "--config.sample.max_new=0"], args.timeout, cwd=where)
  setup = None if r["rc"] == 0 and marker.exists() else (
      f"training with model.family={module} failed (exit {r['rc']}): " + " | ".join(r["lines"][-2:]))
  marker.unlink(missing_ok=True)

  def not_imported(_):
    return not marker.exists(), "marker absent" if not marker.exists() else "the module ran (marker written)"
  cases.append(dict(name="saved model.family runs code", cmd=[*LM, "eval", "run"], cwd=where, check=not_imported,
                    setup_error=setup))
  cases.append(dict(name="second lm train on a workdir", special="second_writer"))
  return cases


def second_writer(args, tmp: pathlib.Path) -> dict:
  """`lm train` on a workdir while another one trains there: the second must stop in one line naming the
  holder, and the first must still be running."""
  work = tmp / "errors" / "w_two"
  cmd = train_cmd(work, ["--config.train.checkpoint_every=20", "--config.train.log_every=1",
                         "--config.sample.max_new=0"], 100_000)
  first = Proc(cmd)
  second = None
  try:
    while first.running() and not any(STEP.search(t) for t in first.texts()) and first.elapsed() < args.timeout:
      time.sleep(0.2)
    if not first.running():
      return dict(cmd=cmd, rc=None, timed_out=False, seconds=0, lines=first.texts(),
                  setup_error=f"the first run exited ({first.p.returncode}) before training")
    second = Proc(cmd)
    concurrent = False
    while second.running() and second.elapsed() < args.timeout:
      if any(STEP.search(t) for t in second.texts()):  # training beside the first: no need to wait longer
        concurrent = True
        time.sleep(1)
        break
      time.sleep(0.2)
    rc = second.wait(0.1 if concurrent else args.timeout)
    first_alive = first.running()
  finally:
    first.kill()
    if second is not None:
      second.kill()
  first.wait(30)
  holder = (str(first.pid), socket.gethostname())
  kept = [t for t in second.texts() if not noise(t)]
  named = bool(kept) and any(h in kept[0] for h in holder)
  return dict(cmd=cmd, rc=rc, timed_out=rc is None and not concurrent, seconds=round(second.elapsed(), 2),
              lines=second.texts(), check=(named and first_alive,
                                           f"holder named: {named}; first still running: {first_alive}"
                                           + ("; the second trained beside it" if concurrent else "")))


def errors_campaign(args, tmp: pathlib.Path) -> dict:
  cases = error_cases(args, tmp)
  rows = []
  print(f"{'case':<32}{'exit':>6}{'error:':>7}{'other':>6}{'pass':>6}  first line", flush=True)
  for case in cases:
    if case.get("special") == "second_writer":
      r = second_writer(args, tmp)
      check = r.pop("check", None)
      case = dict(case, cmd=r.pop("cmd"), setup_error=r.pop("setup_error", None))
    elif case.get("setup_error"):
      r, check = dict(rc=None, timed_out=False, seconds=0, lines=[]), None
    else:
      r = run(case["cmd"], args.timeout, case.get("cwd"))
      check = case["check"](r) if "check" in case else None
    counts = terminal(r["lines"])
    ok = one_error_line(r["rc"], r["lines"]) and (check is None or check[0]) and not case.get("setup_error")
    row = dict(case=case["name"], command=show(case["cmd"]), cwd=str(case.get("cwd") or "."),  # "." = the checkout
               rc=r["rc"], timed_out=r["timed_out"], seconds=r["seconds"], **counts, passed=ok,
               check=check[1] if check else None, setup_error=case.get("setup_error"))
    rows.append(row)
    first = row["setup_error"] or (counts["lines"][0] if counts["lines"] else "")
    print(f"{case['name']:<32}{str(r['rc']):>6}{counts['error_lines']:>7}{counts['other_lines']:>6}"
          f"{'yes' if ok else 'NO':>6}  {first[:100]}" + (f"  [{check[1]}]" if check else ""), flush=True)
  passed = sum(r["passed"] for r in rows)
  print(f"errors: {passed} of {len(rows)} cases print exactly one error line\n", flush=True)
  return dict(passed=passed, cases=len(rows), rows=rows)


CAMPAIGNS = {"kill": kill_campaign, "flip": flip_campaign, "errors": errors_campaign}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--campaigns", default="kill,flip,errors", help="comma-separated: kill, flip, errors")
  p.add_argument("--kills", type=int, default=10, help="SIGKILLs in the kill campaign")
  p.add_argument("--kill-steps", type=int, default=60, help="train.steps of the kill campaign's run")
  # ~35 s a flip trial and ~22 s a kill on a 2-core CPU at load 7: the defaults take ~15 min there.
  p.add_argument("--flips", type=int, default=12, help="byte-flip trials, each on a fresh copy")
  p.add_argument("--bytes", type=int, default=1, help="bytes XORed per trial (all in one file)")
  p.add_argument("--array-share", type=float, default=0.8,
                 help="chance that a trial damages an array data file (params, optimizer state) rather than "
                      "another file of the step")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--timeout", type=float, default=300, help="seconds each subprocess may run")
  p.add_argument("--tmp", default=None, help="scratch directory (default: a new temporary one, removed after)")
  p.add_argument("--out", default=str(DEFAULT_OUT))
  args = p.parse_args(argv)
  chosen = [c.strip() for c in args.campaigns.split(",") if c.strip()]
  unknown = sorted(set(chosen) - set(CAMPAIGNS))
  if unknown:
    p.error(f"unknown campaign(s) {', '.join(unknown)}; choose from {', '.join(CAMPAIGNS)}")
  tmp = pathlib.Path(args.tmp or tempfile.mkdtemp(prefix="lm_faults_"))
  tmp.mkdir(parents=True, exist_ok=True)
  results, start = {}, time.monotonic()
  try:
    for name in chosen:
      t = time.monotonic()
      results[name] = CAMPAIGNS[name](args, tmp)
      results[name]["seconds"] = round(time.monotonic() - t, 1)
  finally:
    if args.tmp is None:
      shutil.rmtree(tmp, ignore_errors=True)
  settings = dict(vars(args), out=_relative(args.out), experiment=EXPERIMENT, kill_modes=KILL_MODES,
                  noise_filters=NOISE,
                  flip_overrides=FLIP_OVERRIDES, flip_steps=FLIP_STEPS, seconds=round(time.monotonic() - start, 1))
  protocol.write(args.out, protocol.record(sys.argv, settings, results))
  print(f"wrote {args.out} ({settings['seconds']} s)")


if __name__ == "__main__":
  main()
