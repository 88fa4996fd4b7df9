"""`lm import hf DIR --workdir W` and `lm export hf W --out DIR`: between a Hugging Face model directory and an
`lm` workdir.

An import is a workdir whose one checkpoint (step 0) holds the params alone, with the config and the model's
own tokenizer: `lm eval`, `lm sample`, `lm export hf` and `init_from` read it; training starts from it in a new
workdir (`lm train EXPERIMENT --config.init_from=W`).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import jax
import numpy as np

from lm import parallel
from lm.errors import CheckpointError, ConfigError
from lm.interop import convert, hf, safetensors
from lm.train import checkpoint, history
from lm.train import run as run_lib
from lm.train.run import build_run


def import_hf(directory, workdir, overrides=()) -> dict:
  """Write `workdir` (a step-0 params-only checkpoint, config, tokenizer) from a Hugging Face model directory.
  Everything is checked (architecture, tokenizer, mesh) before the workdir is touched."""
  config = convert.config_for(directory, overrides)
  tokenizer = convert.hf_tokenizer(directory)
  if checkpoint.latest_step(workdir) is not None:
    raise CheckpointError(f"{workdir} already holds a run; import into a new --workdir")
  run = build_run(config, tokenizer)
  params, _ = convert.hf_params(run, directory)
  # One GB of arrays serialised at a time: orbax copies what it writes to the host first, and with its default
  # (96 GB) a whole model's copy would sit beside the model.
  ckpts = checkpoint.Checkpoints(workdir, keep=1, read_only=False, save_concurrent_gb=1)
  ckpts.save(0, {"params": params}, {"imported_from": str(directory)}, run.config.to_dict(), tokenizer)
  ckpts.wait()
  if jax.process_index() == 0:
    history.record(workdir, run.config.to_dict(), 0, None)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return dict(params=count, kind=hf.kind_of(convert.read_hf_config(directory)), mesh=dict(run.mesh.shape),
              vocab_size=tokenizer.vocab_size, model_vocab=run.model.cfg.vocab_size)


def export_hf(workdir, out, max_shard_bytes: int = 5 << 30, dtype: str = "float32") -> dict:
  """Write the newest good checkpoint of `workdir` as a Hugging Face model directory `out` (weights of the
  trunk, config.json, the tokenizer where it has a Hugging Face form). Auxiliary heads are not exported."""
  out = pathlib.Path(os.path.abspath(os.path.expanduser(str(out))))
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise ConfigError(f"--out {out} exists and is not an empty directory; pick a new directory")
  run, params = run_lib.restore_for_inference(workdir)
  m, cfg, tok = run.config.model, run.model.cfg, run.tokenizer
  kind = hf.export_kind(m)
  np_dtype = {"float32": np.float32, "bfloat16": safetensors.DTYPES["BF16"], "float16": np.float16}[dtype]
  flat = convert.flatten(params)
  cache: dict[str, np.ndarray] = {}

  def host(path: str) -> np.ndarray:
    if path not in cache:
      cache.clear()  # rules read their leaves together, so one leaf group is on the host at a time
      cache[path] = parallel.to_host(flat[path])
    return cache[path]

  def leaves(rule, i):
    if not rule.layer:
      return [host(p) for p in rule.ours]
    if m.scan_layers:
      return [host(f"decoder/layers/{p}")[i] for p in rule.ours]
    return [host(f"decoder/layers_{i}/{p}") for p in rule.ours]

  def shape_of(path: str, stacked: bool):
    s = flat[path].shape
    return jax.ShapeDtypeStruct(s[1:] if stacked else s, np.float32)

  tensors = []
  for rule in hf.rules(kind, cfg):
    for i in range(cfg.num_layers) if rule.layer else [None]:
      if rule.layer and m.scan_layers:
        specs = [shape_of(f"decoder/layers/{p}", True) for p in rule.ours]
      elif rule.layer:
        specs = [shape_of(f"decoder/layers_{i}/{p}", False) for p in rule.ours]
      else:
        specs = [shape_of(p, False) for p in rule.ours]
      shape = jax.eval_shape(lambda *xs, rule=rule: rule.to_hf(*xs, cfg), *specs).shape
      name = rule.hf.format(i=i) if rule.layer else rule.hf
      tensors.append((name, shape, np_dtype,
                      lambda rule=rule, i=i: np.asarray(rule.to_hf(*leaves(rule, i), cfg), dtype=np.float32)))
  context = m.max_positions or run.config.data.seq_len
  config = hf.hf_config(kind, m, cfg.vocab_size, context, tok.bos_id, tok.eos_id)
  config["dtype"] = dtype
  tmp = out.with_name(out.name + ".partial")
  if tmp.exists():
    shutil.rmtree(tmp)
  files = safetensors.write(tmp, tensors, max_shard_bytes)
  (tmp / "config.json").write_text(json.dumps(config, indent=2))
  tok_files = convert.hf_tokenizer_files(tok)
  for name, data in tok_files.items():
    (tmp / name).write_bytes(data)
  if out.exists():
    out.rmdir()
  os.replace(tmp, out)
  heads = sorted({p.split("/")[0] for p in flat if p.split("/")[0].endswith("_head")})
  return dict(kind=kind, files=files, tokenizer=bool(tok_files), heads_left_out=heads)
