"""`lm import hf DIR --workdir W [--config.a.b=VALUE ...]` and `lm export hf W --out DIR`."""

from __future__ import annotations

import argparse

from lm.errors import LMError


def add_parsers(sub) -> None:
  i = sub.add_parser("import", help="import a local Hugging Face model directory (Llama, Mistral, Qwen2/3, GPT-2) "
                     "as a workdir: lm import hf DIR --workdir W",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="--config.a.b=VALUE sets the imported run's fields (mesh.fsdp=8 writes it sharded for "
                     "that mesh; data.seq_len, data.source for `lm eval`).")
  i.add_argument("format", choices=("hf",))
  i.add_argument("source", help="directory with config.json, *.safetensors (sharded or not) and tokenizer.json")
  i.add_argument("--workdir", required=True, help="the new workdir (must hold no run)")
  e = sub.add_parser("export", help="write a token-family run as a Hugging Face model directory: "
                     "lm export hf W --out DIR")
  e.add_argument("format", choices=("hf",))
  e.add_argument("workdir")
  e.add_argument("--out", required=True, help="the directory to write (new or empty)")
  e.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
  e.add_argument("--max-shard-gb", type=float, default=5.0, help="split the weights into files of at most this "
                 "size, with model.safetensors.index.json (default 5)")


def run(args, overrides: list[str]) -> int:
  from lm.interop import workdirs
  if args.command == "import":
    summary = workdirs.import_hf(args.source, args.workdir, overrides)
    print(f"imported {summary['kind']} ({summary['params'] / 1e6:.2f}M params, vocabulary "
          f"{summary['vocab_size']} ids, {summary['model_vocab']} embedding rows) into {args.workdir} on mesh "
          f"{summary['mesh']}; `lm eval {args.workdir}`, `lm sample {args.workdir}`, or fine-tune with "
          f"`lm train EXPERIMENT --config.init_from={args.workdir} --workdir NEW`")
    return 0
  if overrides:
    raise LMError("`lm export hf` takes no --config overrides; drop them")
  summary = workdirs.export_hf(args.workdir, args.out, int(args.max_shard_gb * (1 << 30)), args.dtype)
  print(f"exported {summary['kind']} to {args.out} ({len(summary['files'])} weight file(s)"
        + ("" if summary["tokenizer"] else "; no tokenizer: only BPE and imported tokenizers have a Hugging Face form")
        + (f"; heads left out: {', '.join(summary['heads_left_out'])}" if summary["heads_left_out"] else "") + ")")
  return 0
