"""`lm train|eval|sample|list` (also `python -m lm ...`).

  lm train EXPERIMENT[:ARG] --workdir DIR [--config.a.b=VALUE ...] [--restart]
  lm train --config=experiments/token_ntp.py:tiny --workdir DIR
  lm eval DIR [--split val|test] [--data SOURCE]
  lm sample DIR --prompt TEXT [--max-new N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
  lm list
"""

from __future__ import annotations

import argparse
import json
import sys

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


def _cmd_train(args, overrides: list[str], spec: str | None) -> int:
  from lm import config as config_lib
  experiment = args.experiment or spec
  if not experiment:
    raise LMError("lm train needs an experiment: `lm train token_ntp:tiny --workdir DIR` (`lm list` shows all)")
  if args.experiment and spec:
    raise LMError(f"give the experiment once: either {args.experiment!r} or --config={spec!r}")
  config = config_lib.load_experiment(experiment)
  config_lib.apply_overrides(config, overrides)
  config_lib.validate(config)
  workdir = args.workdir or f"runs/{config.experiment.replace(':', '_')}"

  from lm.train import loop  # heavy imports only once the command line is known to be good
  if args.restart:
    loop.move_aside(workdir)
  summary = loop.train(config, workdir)
  import jax
  if jax.process_index() == 0:
    print(f"bpb: {summary['val_bpb']:.4f}  (val split, {summary['val_n_bytes']} bytes; "
          f"{summary['seconds']:.1f}s)", flush=True)
    if config.sample.max_new > 0:
      text = _sample_text(summary["run"], summary["state"].params, config.sample.prompt, config.sample.max_new,
                          config.sample.temperature, config.sample.top_k, config.sample.top_p,
                          config.sample.seed)
      print(f"sample: {config.sample.prompt}{text}", flush=True)
  return 0


def _sample_text(run, params, prompt: str, max_new: int, temperature: float, top_k: int, top_p: float,
                 seed: int) -> str:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from lm.eval.generate import generate
  from lm.models.base import build_model

  tok = run.tokenizer
  ids = np.concatenate([[tok.bos_id], tok.encode(prompt.encode("utf-8"))]).astype(np.int32)
  decoder = build_model(run.config.model, tok.vocab_size, decode=True)
  params = jax.device_put(params, jax.devices()[0]) if len(jax.devices()) > 1 else params
  out, lengths = generate(decoder, params, jnp.asarray(ids)[None], jax.random.PRNGKey(seed), max_new=max_new,
                          temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                          eos_id=tok.eos_id)
  out = np.asarray(out[0][: int(lengths[0])])
  return tok.decode(out[out != tok.eos_id])


def _cmd_eval(args) -> int:
  from etils import epath

  from lm.data import corpus
  from lm.eval import bpb as bpb_lib
  from lm.train import checkpoint, loop
  run, params, config = loop.restore_for_inference(args.workdir)
  data = loop.load_data(config, tokenizer=run.tokenizer)
  docs = corpus.load_documents(args.data) if args.data else None
  batches = data.eval_batches(args.split, loop.eval_batch_size(run.config),
                              max_batches=config.eval.max_batches or None, docs=docs)
  result = loop.make_evaluator(run)(params, batches)
  flops = bpb_lib.token_flops_per_unit(run.config.model, run.tokenizer.vocab_size, run.config.data.seq_len)
  units_per_byte = result["n_units"] / max(result["n_bytes"], 1)
  result.update(split=args.split, data=args.data or config.data.source,
                flops_per_byte_inference=flops["forward"] * units_per_byte,
                flops_per_byte_train=flops["train"] * units_per_byte)
  name = f"eval_{args.split}.json" if not args.data else f"eval_{args.split}_data.json"
  checkpoint.write_json(epath.Path(args.workdir) / name, result)
  print(f"bpb: {result['bpb']:.4f}")
  print(json.dumps({k: result[k] for k in ("bpb", "n_bytes", "nll_sum")}))
  return 0


def _cmd_sample(args) -> int:
  from lm.train import loop
  run, params, _ = loop.restore_for_inference(args.workdir)
  print(args.prompt + _sample_text(run, params, args.prompt, args.max_new, args.temperature, args.top_k,
                                   args.top_p, args.seed))
  return 0


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="lm", description="Train, evaluate and sample language models by name.")
  sub = p.add_subparsers(dest="command", required=True)
  sub.add_parser("list", help="list the experiments with the first line of their docstrings")
  t = sub.add_parser("train", help="train EXPERIMENT[:ARG]; --config.a.b=VALUE overrides any field")
  t.add_argument("experiment", nargs="?", help="name in experiments/ or a path, with an optional :ARG")
  t.add_argument("--workdir", help="where checkpoints, metrics and the tokenizer go (default runs/NAME)")
  t.add_argument("--restart", action="store_true", help="move old checkpoints aside and start over")
  e = sub.add_parser("eval", help="bits per byte of a trained run")
  e.add_argument("workdir")
  e.add_argument("--split", default="val", choices=("val", "test"))
  e.add_argument("--data", help="score this text source instead, with the run's own tokenizer")
  s = sub.add_parser("sample", help="continue a prompt with a trained run")
  s.add_argument("workdir")
  s.add_argument("--prompt", default="")
  s.add_argument("--max-new", type=int, default=200)
  s.add_argument("--temperature", type=float, default=0.8)
  s.add_argument("--top-k", type=int, default=0)
  s.add_argument("--top-p", type=float, default=1.0)
  s.add_argument("--seed", type=int, default=0)
  return p


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  try:
    from absl import logging as absl_logging  # orbax logs every read-only option it adjusts as a warning
    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:
    pass
  try:
    rest, overrides, spec = _split_overrides(argv)
    args = parser().parse_args(rest)
    if args.command != "train" and (overrides or spec):
      raise LMError(f"--config options only apply to `lm train`, not `lm {args.command}`")
    if args.command == "list":
      return _cmd_list(args)
    if args.command == "train":
      return _cmd_train(args, overrides, spec)
    if args.command == "eval":
      return _cmd_eval(args)
    return _cmd_sample(args)
  except LMError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
