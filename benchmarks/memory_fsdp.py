"""Per-device bytes of parameters + optimizer state under FSDP, from the compiled step's memory_analysis().

Run (8 fake CPU devices; the numbers are what XLA allocates per device, so they hold for any backend):
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/memory_fsdp.py
Writes JSON to --out (default benchmarks/results/memory_fsdp.json) and prints a table.
Compiles only; nothing is run. The issue's bar: fsdp=8 uses at most 1.15/8 of the fsdp=1 figure.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lm import config as config_lib  # noqa: E402
from lm import objectives, parallel  # noqa: E402
from lm.data.tokenizers import ByteTokenizer  # noqa: E402
from lm.train import run as run_lib  # noqa: E402
from lm.train.optim import learning_rate  # noqa: E402
from lm.train.step import make_train_step  # noqa: E402

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "memory_fsdp.json"


def state_bytes_per_device(config, fsdp: int) -> dict:
  """Compile the train step on a (1, fsdp, 1) mesh; report per-device argument bytes of the state."""
  config.mesh.update(data=1, fsdp=fsdp, tensor=1)
  tok = ByteTokenizer()
  run = run_lib.build_run(config, tok, devices=jax.devices()[:fsdp])
  B, T = config.data.batch_size, config.data.seq_len
  step = make_train_step(run.model, objectives.build(config.objectives), run.tx,
                         learning_rate(run.config.optim, config.train.steps), jnp.ones(tok.vocab_size))
  batch_sharding = parallel.batch_sharding(run.mesh)
  batch = {k: jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=batch_sharding)
           for k in ("inputs", "targets", "segment_ids", "positions", "loss_mask")}
  jitted = jax.jit(step, in_shardings=(run.state_shardings, batch_sharding),
                   out_shardings=(run.state_shardings, parallel.replicated(run.mesh)), donate_argnums=0)
  with parallel.activation_context(run.mesh):
    compiled = jitted.lower(run.abstract_state, batch).compile()
  memory = compiled.memory_analysis()
  batch_bytes = 5 * B * T * 4 // fsdp
  state_total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(run.abstract_state))
  return dict(fsdp=fsdp, argument_bytes=memory.argument_size_in_bytes,
              state_bytes=memory.argument_size_in_bytes - batch_bytes, temp_bytes=memory.temp_size_in_bytes,
              state_bytes_unsharded_total=state_total)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=str(DEFAULT_OUT))
  p.add_argument("--experiment", default="token_ntp:tiny")
  p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.d_model=512")
  args = p.parse_args(argv)
  config = config_lib.load_experiment(args.experiment)
  config_lib.apply_overrides(config, ["model.d_model=512", "model.d_ff=2048", "model.num_heads=8",
                                      "model.num_kv_heads=8", *args.overrides])
  sizes = [n for n in (1, 2, 4, 8) if n <= jax.device_count()]
  rows = []
  for n in sizes:
    rows.append(state_bytes_per_device(_copy(config), n))
  base = rows[0]["state_bytes"]
  for r in rows:
    r["fraction_of_fsdp1"] = r["state_bytes"] / base
    r["bar"] = 1.15 / r["fsdp"]
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(experiment=args.experiment, model=config.model.to_dict(), rows=rows), indent=2))
  print(f"memory_fsdp: {args.experiment} d_model={config.model.d_model} layers={config.model.num_layers}, "
        f"{jax.device_count()} {jax.default_backend()} devices")
  print(f"  {'fsdp':>4s} {'state MiB/device':>17s} {'of fsdp=1':>10s} {'bar 1.15/n':>10s}")
  for r in rows:
    print(f"  {r['fsdp']:4d} {r['state_bytes'] / 2**20:17.2f} {r['fraction_of_fsdp1']:10.3f} {r['bar']:10.3f}")


def _copy(config):
  import ml_collections
  return ml_collections.ConfigDict(config.to_dict())


if __name__ == "__main__":
  main()
