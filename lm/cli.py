"""`lm train|compile|eval|sample|probe|compare|import|export|sentences|list|config|launch` (also `python -m lm`).

  lm train EXPERIMENT[:ARG] --workdir DIR [--config.a.b=VALUE ...] [--restart]
           [--coordinator HOST:PORT --num-processes N --process-id I]
  lm train --config=experiments/token_ntp.py:tiny --workdir DIR
  lm prepare SOURCE --out DIR [--tokenizer bpe|bytes|PATH] [--vocab-size N] [--workers K]
             [--tokenizer-sample-bytes B] [--val-fraction F] [--test-fraction F] [--split-seed S]
  lm compile EXPERIMENT[:ARG] --topology v5p:4x4x2 [--config.a.b=VALUE ...] [--json FILE] [--no-flops]
  lm eval DIR [--split val|test] [--data SOURCE] [--noise KIND:RATE] [--byte-exact [--segments N] [--beam K]]
  lm sample DIR --prompt TEXT [--max-new N] [--temperature T] [--top-k K] [--top-p P] [--seed S] [--speculative]
            [--method beam|diverse-beam|power|power-smc|smc|mbr|pkg.module [its flags: --beams N, --alpha A,
            --particles N, --regex PATTERN, --samples N, --utility exact|chrf, ...]]
  lm probe star|induction DIR [--n N] [--seed S]
  lm compare DIR... [-o report.png] [--json FILE] [--flops executed|data]
  lm rl EXPERIMENT[:ARG] --workdir DIR [--config.a.b=VALUE ...]
  lm import hf HF_DIR --workdir W [--config.a.b=VALUE ...]
  lm export hf W --out HF_DIR [--dtype float32|bfloat16|float16] [--max-shard-gb G]
  lm list
  lm config EXPERIMENT[:ARG] [--config.a.b=VALUE ...] | lm config DIR
  lm --version
  lm launch local --processes N [--devices-per-process K] EXPERIMENT[:ARG] --workdir DIR [--config...]
  lm launch tpu --name NAME --zone ZONE [--project P] --repo GIT_URL [--ref REF] EXPERIMENT ... [--dry-run]
  lm launch slurm --nodes N --gpus-per-node G [--partition P] [--time T] EXPERIMENT ... [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from lm.errors import LMError


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str], str | None]:
  """Pull `--config.KEY=VALUE` (or `--config.KEY VALUE`) and `--config=SPEC` out of argv."""
  rest, overrides, spec = [], [], None
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      body = arg[len("--config."):]
      if "=" not in body:
        if i + 1 >= len(argv):
          raise LMError(f"{arg} has no value; write {arg}=VALUE")
        body, i = f"{body}={argv[i + 1]}", i + 1
      overrides.append(body)
    elif arg.startswith("--config="):
      spec = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(argv):
      spec, i = argv[i + 1], i + 1
    else:
      rest.append(arg)
    i += 1
  return rest, overrides, spec


def _cmd_list(args) -> int:
  from lm import config as config_lib
  names = config_lib.list_experiments()
  width = max((len(n) for n in names), default=0)
  for name, line in names.items():
    print(f"{name:<{width}}  {line}")
  return 0


def _load_config(args, overrides: list[str], spec: str | None, command: str = "lm train"):
  from lm import families
  experiment = args.experiment or spec
  if not experiment:
    raise LMError(f"{command} needs an experiment: `{command} token_ntp:tiny --workdir DIR` (`lm list` shows all)")
  if args.experiment and spec:
    raise LMError(f"give the experiment once: either {args.experiment!r} or --config={spec!r}")
  return families.load_config(experiment, overrides)


def _cmd_prepare(args) -> int:
  from lm.data import prepared
  m = prepared.prepare(args.source, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                       workers=args.workers, tokenizer_sample_bytes=args.tokenizer_sample_bytes,
                       val_fraction=args.val_fraction, test_fraction=args.test_fraction, split_seed=args.split_seed,
                       shard_bytes=args.shard_bytes)
  for split, c in m["splits"].items():
    print(f"{split:>5}: {c['documents']} documents, {c['bytes']} bytes" +
          (f", {c['tokens']} tokens" if split == "train" else "") + f" in {len(c['shards'])} shards")
  print(f"{args.out}: train with --config.data.source={args.out}")
  return 0


def _cmd_config(args, overrides: list[str], spec: str | None) -> int:
  """An experiment's resolved config (overrides applied, its family's fields added), or a run's own config
  with the history of what each start and resume changed."""
  target = args.experiment or spec
  if target and ("://" in target or os.path.isdir(target)):
    if overrides:
      raise LMError("`lm config DIR` prints the run's own config and takes no --config overrides; drop them")
    from lm.train import history
    print(history.summary(target))
    return 0
  config = _load_config(args, overrides, spec, command="lm config")
  print(json.dumps(config.to_dict(), indent=2, sort_keys=True))
  return 0


def _cmd_train(args, overrides: list[str], spec: str | None) -> int:
  from lm import parallel
  parallel.check_distributed_args(args.coordinator, args.num_processes, args.process_id)
  config = _load_config(args, overrides, spec)
  workdir = args.workdir or f"runs/{config.experiment.replace(':', '_')}"
  if config.train.tpu_flags:  # libtpu reads its flags once, at its start: before anything touches devices
    from lm import hardware
    hardware.apply_tpu_flags(os.environ, hardware.local_tpu_generation(os.environ))
  # Before anything touches devices: joining other processes is impossible once a backend exists.
  if parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id) is None:
    parallel.use_cpu_cores(config)  # one XLA:CPU device per core that the batch divides over
  import jax
  multi = jax.process_count() > 1
  if multi:  # one line per process, so a launcher's log shows every host came up
    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local "
          f"{jax.default_backend()} devices, {jax.device_count()} in all", flush=True)

  from lm.train import checkpoint, lease, loop  # heavy imports only once the command line is known to be good
  with lease.hold(checkpoint.workdir_path(workdir), "lm train"):  # --restart moves files: only as the one writer
    if args.restart:
      from lm.train import run as run_lib
      run_lib.check(config)  # a bad config must not cost the old run its place: check before moving it aside
      loop.move_aside(workdir)
      if multi:  # nobody may look for a checkpoint to resume from until process 0 has moved them
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("lm-train-restart")
    summary = loop.train(config, workdir)
  if summary["preempted"]:  # saved; the same command resumes
    return 0
  primary = jax.process_index() == 0
  if primary:
    print(f"bpb: {summary['val_bpb']:.4f}  (val split, {summary['val_n_bytes']} bytes; "
          f"{summary['seconds']:.1f}s)", flush=True)
  s = config.sample
  if s.max_new > 0:  # params stay sharded where training left them; every process joins the decode
    loop.release_freed_memory()
    text = summary["run"].sample(summary["state"].params, s.prompt, s.max_new, s.temperature, s.top_k, s.top_p,
                                 s.seed)
    if primary:
      print(f"sample: {s.prompt}{text}", flush=True)
  return 0


def _cmd_compile(args, overrides: list[str], spec: str | None) -> int:
  """Compile the train and eval steps for a TPU topology here (no TPU needed); exit 1 when they do not fit."""
  if "jax" not in sys.modules:  # compiling for a topology needs no accelerator of this machine's own
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  config = _load_config(args, overrides, spec, command="lm compile")
  from lm import aot, hardware
  if config.train.tpu_flags:  # compiled with the flags `lm train` would run with on that generation
    hardware.apply_tpu_flags(os.environ, hardware.tpu_generation(args.topology))
  name = config.experiment.replace(":", "_")
  out = args.json or f"runs/compile/{name}-{args.topology.replace(':', '_')}.json"
  return aot.compile_command(config, args.topology, out, flops=not args.no_flops)


def _cmd_eval(args) -> int:
  from etils import epath

  import lm
  from lm.data import noise
  from lm.train import checkpoint
  if args.noise:
    noise.parse(args.noise)  # a bad spec fails before anything loads
  if args.byte_exact:
    return _eval_byte_exact(args)
  r = lm.load(args.workdir)
  result = dict(r.evaluate(split=args.split, data=args.data, noise=args.noise), step=r.step)
  name = f"eval_{args.split}{'_data' if args.data else ''}{'_noise-' + args.noise.replace(':', '-') if args.noise else ''}.json"
  checkpoint.write_json(epath.Path(args.workdir) / name, result)  # atomic: a concurrent reader sees one whole file
  print(f"bpb: {result['bpb']:.4f}  (checkpoint step {r.step})")
  print(json.dumps({k: result[k] for k in ("bpb", "n_bytes", "nll_sum")}))
  return 0


def _eval_byte_exact(args) -> int:
  from etils import epath

  import lm
  from lm.train import checkpoint
  if args.data or args.noise:
    raise LMError("--byte-exact scores the run's own held-out segments; drop --data and --noise")
  if args.segments < 1 or args.beam < 0:
    raise LMError("--segments must be at least 1 and --beam at least 0 (0: every tokenization)")
  r = lm.load(args.workdir)
  result = dict(r.evaluate_byte_exact(split=args.split, segments=args.segments, beam=args.beam), step=r.step)
  checkpoint.write_json(epath.Path(args.workdir) / f"eval_{args.split}_byte_exact.json", result)
  print(f"bpb: {result['byte_exact_bpb']:.4f} byte-exact, {result['canonical_bpb']:.4f} canonical "
        f"(gap {result['gap_bpb']:.4f} bpb, {result['gap_percent']:.2f}%) over {result['segments']} segments, "
        f"{result['prefixes_scored']} prefixes scored")
  print(json.dumps({k: result[k] for k in ("byte_exact_bpb", "canonical_bpb", "gap_bpb", "n_bytes", "segments")}))
  return 0


def _cmd_compare(args) -> int:
  from lm.eval import compare
  rows = [compare.summarize_run(w, flops=args.flops) for w in args.workdirs]
  print(compare.table(rows))
  if args.output:
    compare.plot(rows, args.output)
    print(f"wrote {args.output}")
  if args.json:
    from lm.train import checkpoint
    checkpoint.write_json(args.json, rows)
  return 0


def _cmd_sample(args, extra: list[str]) -> int:
  import lm
  if args.speculative and (args.top_k or args.top_p < 1.0 or args.temperature):
    raise LMError("--speculative decodes greedily; drop --temperature, --top-k and --top-p")
  if args.max_new < 1:
    raise LMError(f"--max-new {args.max_new}: sample at least 1 unit")
  try:
    args.prompt.encode("utf-8")
  except UnicodeEncodeError:  # argv bytes that are not UTF-8 arrive as lone surrogates
    raise LMError("--prompt is not valid UTF-8; pass the prompt as UTF-8 text") from None
  if args.method:
    return _sample_method(args, extra)
  r = lm.load(args.workdir)
  if args.speculative:
    text, stats = r.speculative(args.prompt, args.max_new)
    print(args.prompt + text)
    print(f"speculative: {stats['units_per_pass']:.2f} accepted units per forward pass ({stats['units']} units "
          f"in {stats['forward_passes']} passes)")
    return 0
  temperature = 0.8 if args.temperature is None else args.temperature
  print(args.prompt + r.sample(args.prompt, args.max_new, temperature, args.top_k, args.top_p, args.seed))
  return 0


def _sample_method(args, extra: list[str]) -> int:
  """`lm sample --method NAME [its flags]`: the chosen continuation after the prompt, then one line per output
  and the method's cost. The method's flags come from its registration (`lm.decoding.methods`)."""
  import lm
  from lm.decoding import methods
  if args.speculative or args.top_k or args.top_p < 1.0:
    raise LMError("--method decodes with the model's own distribution; drop --speculative, --top-k and --top-p")
  options = dict(methods.parse_flags(args.method, extra), max_new=args.max_new, seed=args.seed)
  if args.temperature is not None:
    options["temperature"] = args.temperature  # sample's own flag; a method that reads it (mbr) takes it
  methods.resolve(args.method, options)  # before the checkpoint loads
  report = lm.load(args.workdir).decode(args.prompt, args.method, **options)
  outputs = report["outputs"]
  print(args.prompt + outputs[report["chosen"]]["text"])
  for i, out in enumerate(outputs):
    extra = "".join(f" | {k} {out[k]:.4g}" for k in ("score", "weight", "expected_utility") if k in out)
    mark = "*" if i == report["chosen"] else " "
    print(f"{mark} {i:>3} | log p {out['log_p']:9.3f} | {len(out['units'])} units{extra} | {out['text']!r}")
  print(f"{args.method}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in report["stats"].items()))
  return 0


def _cmd_sentences(args, overrides: list[str], spec: str | None) -> int:
  """A concept experiment's chunk texts of one split, one JSON string per line: what an external sentence
  encoder embeds, row for row, for `data.concept_embeddings`."""
  from lm import families
  config = _load_config(args, overrides, spec, command="lm sentences")
  family = families.require(families.get(config.model.family), families.SentenceLister, "lm sentences", config)
  texts = family.sentences(config, args.split)
  lines = [json.dumps(text.decode("utf-8", errors="replace")) for text in texts]
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + ("\n" if lines else ""))
    print(f"wrote {len(lines)} sentences of the {args.split} split to {args.output}")
  else:
    print("\n".join(lines))
  return 0


def _cmd_probe(args) -> int:
  from etils import epath

  from lm.eval import probes
  from lm.train import checkpoint, run as run_lib
  probes.get(args.name)  # an unknown name fails before the checkpoint is read
  run, params = run_lib.restore_for_inference(args.workdir)
  result = probes.run_probe(args.name, run, params, n=args.n, seed=args.seed)
  checkpoint.write_json(epath.Path(args.workdir) / f"probe_{args.name}.json", result)
  print(f"accuracy: {result['accuracy']:.4f}")
  print(json.dumps({k: v for k, v in result.items() if k != "examples"}))
  return 0


def _cmd_launch(args, overrides: list[str], spec: str | None) -> int:
  import launch
  config = _load_config(args, overrides, spec, command=f"lm launch {args.target}")  # fail here, not on N hosts
  argv = launch.train_argv(args.experiment, args.workdir, overrides, spec, args.restart)
  if args.target == "local":
    from launch import local
    if args.processes < 1 or (args.devices_per_process is not None and args.devices_per_process < 1):
      raise LMError("--processes and --devices-per-process must be at least 1")
    return local.launch(argv, args.processes, args.devices_per_process)
  if args.target == "tpu":
    from launch import tpu
    cmds = tpu.commands(args.name, args.zone, args.project, argv, repo=args.repo, ref=args.ref,
                        install=not args.skip_install)
    return tpu.launch(cmds, dry_run=args.dry_run)
  from launch import slurm
  output = args.output or slurm.default_output(args.workdir)
  job_name = args.job_name or f"lm-{launch.run_name(config.experiment)}"
  text = slurm.script(argv, args.nodes, args.gpus_per_node, job_name, output, partition=args.partition,
                      time=args.time, account=args.account, python=args.python)
  return slurm.launch(text, args.workdir, output, dry_run=args.dry_run)


def parser() -> argparse.ArgumentParser:
  from lm import __version__
  from lm import config as config_lib
  p = argparse.ArgumentParser(prog="lm", description="Train, evaluate and sample language models by name. "
                              "`lm COMMAND --help` tells more.")
  p.add_argument("--version", action="version", version=f"lm {__version__}")
  sub = p.add_subparsers(dest="command", metavar="COMMAND")
  sub.add_parser("list", help="list the experiments with the first line of their docstrings")
  cf = sub.add_parser("config", help="print an experiment's resolved config (--config.a.b=VALUE applied), or a run's "
                      "config and history", epilog=config_lib.overrides_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
  cf.add_argument("experiment", nargs="?", metavar="EXPERIMENT[:ARG]|DIR")
  t = sub.add_parser("train", help="train EXPERIMENT[:ARG]; --config.a.b=VALUE overrides any field",
                     epilog=config_lib.overrides_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
  t.add_argument("experiment", nargs="?", help="name in experiments/ or a path, with an optional :ARG")
  t.add_argument("--workdir", help="where checkpoints, metrics and the tokenizer go (default runs/NAME)")
  t.add_argument("--restart", action="store_true", help="move old checkpoints aside and start over")
  t.add_argument("--coordinator", help="HOST:PORT of process 0, for a multi-process run that jax cannot "
                 "detect by itself (TPU pods and SLURM need no flags)")
  t.add_argument("--num-processes", type=int, help="processes in the run (with --coordinator)")
  t.add_argument("--process-id", type=int, help="this process's index, 0 to N-1 (with --coordinator)")
  pp = sub.add_parser("prepare", help="tokenize a corpus once into ArrayRecord shards that training reads lazily "
                      "(--config.data.source=DIR)")
  pp.add_argument("source", help="as data.source: files, directories, globs, jsonl:PATH:FIELD, parquet:PATH:COLUMN")
  pp.add_argument("--out", required=True, help="the prepared directory to write (local)")
  pp.add_argument("--tokenizer", default="bpe", help="bpe (trained on a sample of the train split), bytes, or a "
                  "tokenizer path (default bpe)")
  pp.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary (default 4096)")
  pp.add_argument("--workers", type=int, default=2, help="tokenizer worker processes (default 2)")
  pp.add_argument("--tokenizer-sample-bytes", type=int, default=64 << 20,
                  help="bytes of train text the BPE tokenizer is trained on (default 64 MiB)")
  pp.add_argument("--val-fraction", type=float, default=0.02)
  pp.add_argument("--test-fraction", type=float, default=0.02)
  pp.add_argument("--split-seed", type=int, default=0)
  pp.add_argument("--shard-bytes", type=int, default=256 << 20, help="bytes per ArrayRecord shard (default 256 MiB)")
  co = sub.add_parser("compile", help="compile EXPERIMENT's train and eval steps ahead of time for a TPU slice "
                      "(libtpu, no TPU needed): memory per device against HBM, FLOPs, collectives",
                      epilog=config_lib.overrides_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
  co.add_argument("experiment", nargs="?", help="as for `lm train`; --config.a.b=VALUE overrides too")
  co.add_argument("--topology", required=True, help="TPU slice, GENERATION:SHAPE: v4:2x2x1, v5p:4x4x2, v5e:4x4, "
                  "v6e:2x2, ...; or cpu: this machine's CPU devices (compiled against analytic FLOPs)")
  co.add_argument("--json", help="where to write the report (default runs/compile/NAME-TOPOLOGY.json)")
  co.add_argument("--no-flops", action="store_true", help="skip the second (unrolled) compile that counts FLOPs")
  e = sub.add_parser("eval", help="bits per byte of a trained run")
  e.add_argument("workdir")
  e.add_argument("--split", default="val", choices=("val", "test"))
  e.add_argument("--data", help="score this text source instead, with the run's own tokenizer")
  e.add_argument("--noise", help="score noised text: KIND:RATE with KIND delete, swap or upper, e.g. swap:0.05")
  e.add_argument("--byte-exact", action="store_true", help="token models: also sum every tokenization of each "
                 "held-out segment (byte-level marginal) and report it beside canonical bits per byte")
  e.add_argument("--segments", type=int, default=32, help="--byte-exact: held-out segments to score")
  e.add_argument("--beam", type=int, default=16, help="--byte-exact: keep the K most probable tokenizations of "
                 "each prefix, and the canonical one (0: all of them, exponential in the segment's length)")
  cp = sub.add_parser("compare", help="table (and plot) of trained runs: bits per byte against FLOPs")
  cp.add_argument("workdirs", nargs="+")
  cp.add_argument("-o", "--output", help="write a plot of bits per byte against training FLOPs (PNG)")
  cp.add_argument("--json", help="also write the table as JSON")
  cp.add_argument("--flops", choices=("executed", "data"), default="executed",
                  help="FLOPs as the compiled steps execute them, padding included (default), or at the positions "
                  "holding data (an ideal padding-free implementation)")
  s = sub.add_parser("sample", help="continue a prompt with a trained run")
  s.add_argument("workdir")
  s.add_argument("--prompt", default="")
  s.add_argument("--max-new", type=int, default=200)
  s.add_argument("--temperature", type=float, help="0 is greedy (default 0.8; --speculative: greedy)")
  s.add_argument("--top-k", type=int, default=0)
  s.add_argument("--top-p", type=float, default=1.0)
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--speculative", action="store_true",
                 help="greedy, drafting with the run's own mtp heads (or dsmtp modules) and verifying with its "
                 "next-unit head")
  s.add_argument("--method", help="a sequence-level method (a unit-decoder family, e.g. token): beam, diverse-beam, "
                 "power (MH), power-smc, smc, mbr, or a dotted module path that registers one; each method's own "
                 "flags follow it (e.g. --beams 4, --regex PATTERN; lm.decoding.methods)")
  pr = sub.add_parser("probe", help="accuracy of a trained run on held-out synthetic tasks (star, induction)")
  pr.add_argument("name", help="star or induction (lm/eval/probes.py)")
  pr.add_argument("workdir")
  pr.add_argument("--n", type=int, help="held-out documents (default 200)")
  pr.add_argument("--seed", type=int, help="seed of the held-out documents (default: the training seed + 1)")
  se = sub.add_parser("sentences", help="a concept experiment's sentences of one split, one JSON string per line "
                      "(the rows of data.concept_embeddings)")
  se.add_argument("experiment", nargs="?", help="as for `lm train`; --config.a.b=VALUE overrides too")
  se.add_argument("--split", default="train", choices=("train", "val", "test"))
  se.add_argument("-o", "--output", help="write to this file instead of stdout")
  from lm.rl import cli as rl_cli
  rl_cli.add_parser(sub)
  from lm.interop import cli as interop_cli
  interop_cli.add_parsers(sub)
  import launch
  launch.add_parser(sub)
  for name in ("train", "rl", "eval", "sample", "probe", "export"):  # the commands that read a saved config
    sub.choices[name].add_argument(
        "--trust-code", action="store_true", help="let a workdir's saved config import the family or objective "
        "modules it names from outside lm (their code runs): only for runs whose makers you trust")
  return p


def _library_logs_to_file() -> str:
  """Send what libraries log (orbax's errors from its save threads with their tracebacks: 330 lines on a full
  disk) to a file, so the terminal shows lm's own lines; the file is created only if something is logged."""
  import logging

  from lm.errors import process_log, unraisable_to
  path = process_log()
  root = logging.getLogger()
  for handler in list(root.handlers):  # absl's handler writes to stderr
    root.removeHandler(handler)
  to_file = logging.FileHandler(path, delay=True)
  to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  root.addHandler(to_file)
  unraisable_to(path)
  return path


def main(argv: list[str] | None = None) -> int:
  log = _library_logs_to_file() if argv is None else None  # the command line itself, not a test's call
  argv = sys.argv[1:] if argv is None else argv
  from absl import logging as absl_logging  # orbax logs every read-only option it adjusts as a warning
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    rest, overrides, spec = _split_overrides(argv)
    p = parser()
    args, extra = p.parse_known_args(rest)
    if extra and not (args.command == "sample" and args.method):
      p.parse_args(rest)  # argparse's own error for flags no command reads
    if args.command is None:  # bare `lm`: what there is to do
      p.print_help()
      return 0
    if getattr(args, "trust_code", False):
      from lm import families
      families.trust_code()
    if args.command not in ("train", "compile", "launch", "sentences", "config", "import", "export", "rl") and (
        overrides or spec):
      raise LMError(f"--config options only apply to `lm train`, `lm compile`, `lm config`, `lm launch`, "
                    f"`lm import` and `lm sentences`, not `lm {args.command}`")
    if args.command == "list":
      return _cmd_list(args)
    if args.command == "config":
      return _cmd_config(args, overrides, spec)
    if args.command == "train":
      return _cmd_train(args, overrides, spec)
    if args.command == "compile":
      return _cmd_compile(args, overrides, spec)
    if args.command == "launch":
      return _cmd_launch(args, overrides, spec)
    if args.command == "prepare":
      return _cmd_prepare(args)
    if args.command == "rl":
      from lm.rl import cli as rl_cli
      return rl_cli.run(args, _load_config(args, overrides, spec, command="lm rl"))
    if args.command in ("import", "export"):
      from lm.interop import cli as interop_cli
      return interop_cli.run(args, overrides)
    if args.command == "eval":
      return _cmd_eval(args)
    if args.command == "probe":
      return _cmd_probe(args)
    if args.command == "compare":
      return _cmd_compare(args)
    if args.command == "sentences":
      return _cmd_sentences(args, overrides, spec)
    return _cmd_sample(args, extra)
  except LMError as e:
    logged = log and os.path.exists(log) and os.path.getsize(log) and "(details: " not in str(e)
    print(f"error: {e}" + (f" (library messages: {log})" if logged else ""), file=sys.stderr)
    _exit_now_if_distributed(2)
    return 2
  except BaseException:
    if _distributed():
      traceback.print_exc()
      _exit_now_if_distributed(1)
    raise


def _distributed() -> bool:
  return "jax" in sys.modules and sys.modules["jax"].distributed.is_initialized()


def _exit_now_if_distributed(code: int) -> None:
  """A failed process of a multi-process run exits at once: a normal exit waits in jax's shutdown barrier
  for peers that may be stuck waiting for it, so nobody (launcher, srun) would learn of the failure."""
  if _distributed():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
  sys.exit(main())
