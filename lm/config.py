"""The base config, experiments looked up by name, dotted overrides and validation.

An experiment is `experiments/NAME.py` with `get_config(arg=None) -> ConfigDict`; `NAME:ARG` picks a variant
(big_vision style). Every mistake here raises `ConfigError` with one line, before anything compiles.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pathlib
from typing import Any

import ml_collections

from lm.errors import ConfigError, did_you_mean, plural, type_name

SECTIONS = ("model", "data", "objectives", "optim", "train", "mesh", "eval", "sample", "rl")


def base_config() -> ml_collections.ConfigDict:
  """The fields every run has. A family adds its own section (`lm.families.base_config(NAME)`); experiments
  change values, never add keys."""
  c = ml_collections.ConfigDict()
  c.experiment = ""  # filled in by `load_experiment`: NAME[:ARG]
  # A workdir or a local Hugging Face model directory to start from: its architecture, tokenizer and weights
  # (heads it lacks start fresh); docs/interop.md.
  c.init_from = ""

  c.model = dict(
      family="token",
      d_model=128, num_layers=4, num_heads=4, num_kv_heads=4, d_ff=512, head_dim=0,
      rope_base=10_000.0, tie_embeddings=True, norm_eps=1e-6, init_std=0.02,
      vocab_multiple=0,         # embedding/unembedding padded to a multiple (0: 128 on TPU/GPU, 8 on CPU); masked
      logits_chunk=0,           # token family: positions per tile of the main head's loss (0 auto: tiles when
                                # a row's logits pass 2^24; -1 always dense), so [B, T, V] logits never exist
      scan_layers=True,
      scan_unroll=0,            # 0: per backend (fully unrolled on CPU, rolled on TPU/GPU); else lax.scan unroll
      remat_policy="none",      # none | full | dots | comma-separated names from models.transformer.REMAT_NAMES
      attention_impl="auto",    # auto (TPU splash, GPU pallas_gpu, CPU xla) | xla | cudnn | splash | pallas_gpu
      attention_block_q=512, attention_block_kv=512,  # fused kernels' block lengths
      attention_interpret=False,  # run the fused kernels in Pallas' interpreter (set on CPU when one is asked)
      dtype="auto",             # activations: auto = bfloat16 on TPU/GPU, float32 on CPU
      param_dtype="float32",
      mlp="swiglu",             # swiglu | gelu | gelu_tanh (GPT-2 / nanoGPT: d_ff = 4 * d_model)
      positions="rope",         # rope | learned (token family; GPT-2's absolute table of max_positions rows)
      norm="rms",               # rms | layer (LayerNorm)
      max_positions=0,          # learned positions' table rows (0: data.seq_len)
      vocab_size=0,             # embedding rows (0: the tokenizer's); an imported model's may be larger
      # What real checkpoints need (layers.TransformerConfig): biases, QK-norm, sliding window, RoPE scaling.
      norm_bias=False, qkv_bias=False, out_bias=False, mlp_bias=False, qk_norm=False, sliding_window=0,
      rope_scaling="none", rope_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
      rope_original_positions=8192,
  )
  c.data = dict(
      # python-prose | python-code | file/dir/glob | jsonl:PATH:FIELD | parquet:PATH:COLUMN | a directory from
      # `lm prepare`; comma-joined to concatenate, '0.7*A,0.3*B' to mix (docs/data.md)
      source="python-prose",
      tokenizer="bytes",        # bytes | bpe | path to tokenizer.json | path to SentencePiece .model
      vocab_size=4096,          # BPE vocabulary to train; loaded tokenizers and bytes bring their own
      seq_len=256,
      batch_size=32,            # global batch, in rows of seq_len units
      val_fraction=0.02, test_fraction=0.02, split_seed=0,
      eval_max_bytes=0,         # held-out segment length in bytes; 0: the family's default (token: seq_len - 1)
      completion_after="",      # token family: no loss on each document up to and including this marker (e.g. "=")
      max_raw_bytes=1 << 30,    # raw text above this is refused at start-up: `lm prepare` it once instead
      workers=0,                # grain worker processes building batches (0: threads in this process)
      prefetch=4,               # batches built ahead of the train step
  )
  c.objectives = [dict(name="ntp", weight=1.0)]
  c.optim = dict(
      lr=3e-3, warmup_steps=100, weight_decay=0.1, clip_norm=1.0,
      b1=0.9, b2=0.95, eps=1e-8, schedule="cosine", min_lr_ratio=0.1,
  )
  c.train = dict(
      steps=1000, log_every=50, eval_every=500, eval_batches=8, checkpoint_every=500,
      keep_checkpoints=3, seed=0, grad_accum=1, max_nonfinite_steps=10,
      trackers=("jsonl", "tensorboard"),  # lm/train/trackers.py: jsonl | tensorboard | wandb | module.Class
      # "START:STOP": a jax profiler trace of steps START+1..STOP in WORKDIR/profile (TensorBoard's profile tab)
      profile_steps="",
      # persistent XLA compilation cache: "auto" (~/.cache/lm/xla on accelerators, off on CPU), "" off, or a
      # directory (gs:// too); a restarted or resumed run then skips its compiles
      compilation_cache="auto",
      # libtpu flags that overlap collectives with compute (`hardware.tpu_flags`), for the TPU generation the
      # host reports; only set where the user's LIBTPU_INIT_ARGS do not name them already
      tpu_flags=True,
  )
  # cpu_devices: XLA:CPU devices `lm train` makes of this host's cores (0: as many as divide the batch rows,
  # for a data mesh: XLA:CPU runs one program per device in parallel, where small matmuls of one program run
  # on one core; 1: one device). Only a single-process `lm train` on a fresh backend applies it.
  c.mesh = dict(data=-1, fsdp=1, tensor=1, cpu_devices=0)
  c.eval = dict(batch_size=0, max_batches=0)  # batch_size 0: training microbatch; max_batches 0: all
  c.sample = dict(prompt="The ", max_new=200, temperature=0.8, top_k=0, top_p=1.0, seed=0)
  # `lm rl` (lm/rl/loop.py): sequence-level training from `init_from` (empty: this experiment's own `lm train`
  # run into WORKDIR/init first) on prompts with answers; the policy-gradient options as lm.objectives.sequence.
  # rl.algorithm=dpo trains on rl.pairs (a JSONL of prompt/chosen/rejected) with `dpo` at rl.beta instead.
  # Held out: the first rl.eval_prompts of rl.eval_source (pg), else the first of rl.prompts (or rl.pairs).
  c.rl = dict(algorithm="pg", pairs="", beta=0.1, init_from="", reference="", prompts="synthetic:arith:seed=1",
              eval_source="", eval_prompts=64, stop=(),  # stop: strings that end a completion besides eos
              rewards=("exact_answer",), reward_weights=(1.0,), group=8, prompts_per_step=8, max_new=8,
              temperature=1.0, top_k=0, top_p=1.0, updates_per_batch=1, advantage="grpo", ratio="token",
              clip_low=0.2, clip_high=0.2, dual_clip=0.0, aggregation="sequence_mean", kl_coef=0.0,
              kl_estimator="k3", lr=1e-5, steps=100, log_every=10, eval_every=50, checkpoint_every=50, pass_k=8,
              pack=0)  # pack N > 0: training rows of N x (longest prompt + max_new) units, sequences packed
  return c


# ---------------------------------------------------------------------------------------------------------
# Experiments by name.

def experiments_dir() -> pathlib.Path:
  import experiments  # the top-level package shipped beside `lm`
  return pathlib.Path(experiments.__file__).parent


def list_experiments() -> dict[str, str]:
  """name -> first line of the experiment's docstring."""
  out = {}
  for path in sorted(experiments_dir().glob("*.py")):
    if path.name.startswith("_"):
      continue
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    out[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
  return out


def _resolve_experiment(name: str) -> pathlib.Path:
  path = pathlib.Path(name)
  if name.endswith(".py") or path.parent != pathlib.Path("."):
    if not path.exists():
      raise ConfigError(f"experiment file {name!r} does not exist; `lm list` shows the named experiments")
    return path
  candidate = experiments_dir() / f"{name}.py"
  if candidate.exists():
    return candidate
  names = list(list_experiments())
  raise ConfigError(f"unknown experiment {name!r}; {did_you_mean(name, names)}`lm list` shows all {len(names)}")


def load_experiment(spec: str) -> ml_collections.ConfigDict:
  """`NAME[:ARG]` or `path/to/file.py[:ARG]` -> the experiment's config on top of the base config."""
  name, _, arg = spec.partition(":")
  path = _resolve_experiment(name)
  module_spec = importlib.util.spec_from_file_location(f"lm_experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"experiment {str(path)!r} has no get_config(arg) function")
  config = module.get_config(arg or None)
  config.experiment = f"{path.stem}:{arg}" if arg else path.stem
  return config


def variant(sizes: dict[str, dict], arg: str | None, experiment: str, default: str | None = "base") -> dict:
  """The entry of an experiment's `SIZES` table named by `arg` (`default` when no arg is given)."""
  key = arg or default
  if key not in sizes:
    names = [k for k in sizes if k != default]
    choices = f"{', '.join(names)} or leave it out" if default in sizes else " or ".join(names)
    raise ConfigError(f"{experiment}: unknown variant {arg!r}; choose {choices}")
  return sizes[key]


def update(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
  """Nested update of existing fields (`{"model": {"d_model": 64, "encoder": {...}}}`); returns `config`."""
  for key, value in values.items():
    if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
      update(config[key], value)
    else:
      if key not in config:
        raise _unknown(config, key)
      config[key] = value
  return config


# ---------------------------------------------------------------------------------------------------------
# Dotted overrides.

def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    key = f"{prefix}{k}"
    if isinstance(v, ml_collections.ConfigDict):
      keys += all_keys(v, key + ".")
    else:
      keys.append(key)
  return keys


def flatten(d: dict, prefix: str = "", sep: str = ".") -> dict[str, Any]:
  """A nested dict (a config's `to_dict()`, a params tree with sep="/") as `{"a.b.c": leaf}`."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}{sep}", sep))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _unknown(config, dotted: str) -> ConfigError:
  hint = did_you_mean(dotted, all_keys(config), prefix="config.")
  return ConfigError(f"unknown config key config.{dotted}; " + (hint.rstrip() or "`lm config EXPERIMENT` prints every key"))


def _parse(text: str, current: Any, dotted: str) -> Any:
  if isinstance(current, bool):
    low = text.lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise ConfigError(f"config.{dotted}={text!r}: expected true or false")
  if isinstance(current, str):
    return text
  if isinstance(current, (list, tuple)) and all(isinstance(v, str) for v in current) and (
      not text.strip() or text.strip()[0] not in "[("):
    return type(current)(v.strip() for v in text.split(",") if v.strip())  # names: a,b,c
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    try:
      value = json.loads(text)
    except ValueError:
      raise ConfigError(f"config.{dotted}={text!r}: expected {type_name(current)}") from None
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if current is not None and not isinstance(value, type(current)) and not (
      isinstance(current, (list, tuple)) and isinstance(value, (list, tuple))):
    raise ConfigError(f"config.{dotted}={text!r}: expected {type_name(current)}, got {type_name(value)}")
  return value


def set_value(config: ml_collections.ConfigDict, dotted: str, value: Any, parse: bool = True) -> None:
  """Set `a.b.c` (list items by index: `objectives.0.weight`); parse strings by the current type."""
  parts = dotted.split(".")
  node: Any = config
  for i, part in enumerate(parts[:-1]):
    if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
      node = node[int(part)]
    elif isinstance(node, (list, tuple)):
      where = ".".join(parts[:i])
      raise ConfigError(f"config.{dotted}: config.{where} has {plural(len(node), 'entry', 'entries')}, numbered "
                        f"from 0; {part!r} is not one of them")
    elif isinstance(node, (dict, ml_collections.ConfigDict)) and part in node:
      node = node[part]
    else:
      raise _unknown(config, dotted)
  last = parts[-1]
  if isinstance(node, list) and last.isdigit() and int(last) < len(node):
    node[int(last)] = _parse(value, node[int(last)], dotted) if parse else value
    return
  if isinstance(node, dict) and not isinstance(node, ml_collections.ConfigDict):
    # An objective's options are free-form: its own function validates them.
    if parse:
      value = _parse(value, node.get(last, None), dotted) if last in node else _literal(value)
    node[last] = value
    return
  if not isinstance(node, ml_collections.ConfigDict) or last not in node:
    raise _unknown(config, dotted)
  current = node[last]
  if parse and isinstance(value, str):
    value = _parse(value, current, dotted)
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if dotted == "objectives" or isinstance(current, (list, tuple)):
    node[last] = [dict(v) for v in value] if dotted == "objectives" else type(current)(value)
    return
  try:
    node[last] = value
  except TypeError as e:
    raise ConfigError(f"config.{dotted}={value!r}: {e}".splitlines()[0]) from None


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
  """`["model.d_model=256", "train.steps=10"]` applied in order."""
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep:
      raise ConfigError(f"override {item!r} has no value; write --config.{key}=VALUE")
    set_value(config, key.removeprefix("config."), value)
  return config


def overrides_help() -> str:
  """The `--config.a.b=VALUE` syntax and the base config's sections with their fields (`lm train --help`)."""
  import textwrap
  base = base_config()
  lines = ["config overrides (any number, applied in order; an unknown key fails at once):",
           "  --config.SECTION.FIELD=VALUE   parsed by the field's type: --config.train.steps=200",
           "                                 --config.optim.lr=1e-3  --config.model.scan_layers=false",
           "  --config.objectives.N.OPTION=VALUE   an objective's weight or option: --config.objectives.0.z_loss=1e-4",
           "  --config.train.trackers=jsonl,wandb  a list of names, comma-separated",
           "  --config=FILE.py[:ARG]         the experiment as a file (big_vision style)", "", "sections:"]
  for section in SECTIONS:
    value = base[section]
    fields = ", ".join(value.keys()) if hasattr(value, "keys") else "a list of dict(name=..., weight=..., options)"
    lines += textwrap.wrap(f"{section}: {fields}", width=110, initial_indent="  ", subsequent_indent="    ")
  lines += ["", "A family adds its own fields (model.encoder, data.num_chunks, ...); `lm config EXPERIMENT[:ARG]` prints",
            "every field of an experiment with its value, `lm config DIR` a run's own config and history."]
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Validation and per-backend defaults.

def validate(config: ml_collections.ConfigDict) -> None:
  """Checks that need no devices and no data; raise one line per problem."""
  for key in all_keys(config):
    if key.split(".")[0] not in SECTIONS and key not in ("experiment", "init_from"):
      raise ConfigError(f"config.{key} is not in any section {SECTIONS}")
  m, d, t, o = config.model, config.data, config.train, config.optim
  positive = {"model.d_model": m.d_model, "model.num_layers": m.num_layers, "model.num_heads": m.num_heads,
              "model.num_kv_heads": m.num_kv_heads, "model.d_ff": m.d_ff, "data.seq_len": d.seq_len,
              "data.batch_size": d.batch_size, "train.steps": t.steps, "train.log_every": t.log_every,
              "train.grad_accum": t.grad_accum}
  e, s, r = config.eval, config.sample, config.rl
  positive.update({"train.keep_checkpoints": t.keep_checkpoints, "train.eval_batches": t.eval_batches,
                   "optim.lr": o.lr, "data.vocab_size": d.vocab_size, "rl.steps": r.steps, "rl.lr": r.lr,
                   "rl.log_every": r.log_every, "rl.eval_every": r.eval_every, "rl.checkpoint_every": r.checkpoint_every,
                   "rl.group": r.group, "rl.prompts_per_step": r.prompts_per_step, "rl.max_new": r.max_new,
                   "rl.pass_k": r.pass_k, "rl.updates_per_batch": r.updates_per_batch, "rl.beta": r.beta})
  why = {"train.keep_checkpoints": " (0 would delete every checkpoint, the final one too)"}
  for key, value in positive.items():
    if value <= 0:
      raise ConfigError(f"config.{key}={value} must be positive{why.get(key, '')}")
  # 0 means off, none or the default for these; below 0 means nothing.
  non_negative = {"train.checkpoint_every": t.checkpoint_every, "train.eval_every": t.eval_every,
                  "train.max_nonfinite_steps": t.max_nonfinite_steps, "optim.warmup_steps": o.warmup_steps,
                  "optim.weight_decay": o.weight_decay, "optim.clip_norm": o.clip_norm, "optim.eps": o.eps,
                  "optim.min_lr_ratio": o.min_lr_ratio, "data.eval_max_bytes": d.eval_max_bytes,
                  "data.workers": d.workers, "data.prefetch": d.prefetch, "eval.batch_size": e.batch_size,
                  "eval.max_batches": e.max_batches, "sample.max_new": s.max_new, "sample.temperature": s.temperature,
                  "sample.top_k": s.top_k, "rl.eval_prompts": r.eval_prompts, "rl.pack": r.pack,
                  "rl.temperature": r.temperature, "rl.top_k": r.top_k, "rl.kl_coef": r.kl_coef}
  for key, value in non_negative.items():
    if value < 0:
      raise ConfigError(f"config.{key}={value} must be >= 0")
  for key, value in (("optim.b1", o.b1), ("optim.b2", o.b2)):
    if not 0 <= value < 1:
      raise ConfigError(f"config.{key}={value} must be in [0, 1) (Adam's decay rates, e.g. 0.9 and 0.95)")
  for key, value in (("sample.top_p", s.top_p), ("rl.top_p", r.top_p)):
    if not 0 < value <= 1:
      raise ConfigError(f"config.{key}={value} must be in (0, 1] (1 keeps every token)")
  if not (0 <= d.val_fraction and 0 <= d.test_fraction and d.val_fraction + d.test_fraction < 1):
    raise ConfigError(f"config.data.val_fraction={d.val_fraction} and test_fraction={d.test_fraction} must be >= 0 "
                      "and sum to < 1; lower them")
  if m.num_heads % m.num_kv_heads:
    raise ConfigError(f"model.num_heads={m.num_heads} is not a multiple of model.num_kv_heads="
                      f"{m.num_kv_heads}; pick num_kv_heads dividing num_heads")
  if not m.head_dim and m.d_model % m.num_heads:
    raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.num_heads={m.num_heads}; "
                      "change one or set model.head_dim")
  for key, choices in (("mlp", ("swiglu", "gelu", "gelu_tanh")), ("positions", ("rope", "learned")),
                      ("norm", ("rms", "layer")), ("rope_scaling", ("none", "llama3", "linear"))):
    if m[key] not in choices:
      raise ConfigError(f"model.{key}={m[key]!r}; choose {' or '.join(choices)}")
  if m.positions == "learned" and m.max_positions and d.seq_len > m.max_positions:
    raise ConfigError(f"data.seq_len={d.seq_len} is longer than the learned position table (model.max_positions="
                      f"{m.max_positions}); lower data.seq_len")
  if m.sliding_window < 0 or m.vocab_size < 0:
    raise ConfigError(f"model.sliding_window={m.sliding_window}, model.vocab_size={m.vocab_size} must be >= 0")
  if m.positions == "rope" and (m.head_dim or m.d_model // m.num_heads) % 2:
    raise ConfigError("the head width must be even for RoPE; change model.d_model/num_heads or head_dim")
  for key in ("dtype", "param_dtype"):
    if m[key] not in ("auto", "float32", "bfloat16", "float16") or (key == "param_dtype" and m[key] == "auto"):
      raise ConfigError(f"model.{key}={m[key]!r}; choose float32, bfloat16 or float16"
                        + (" (or auto)" if key == "dtype" else ""))
  if config.mesh.cpu_devices < 0:
    raise ConfigError(f"mesh.cpu_devices={config.mesh.cpu_devices} must be 0 (one per core the batch divides "
                      "over) or a device count")
  if m.attention_impl not in ATTENTION_IMPLS:
    raise ConfigError(f"model.attention_impl={m.attention_impl!r}; choose {', '.join(ATTENTION_IMPLS)}")
  if m.logits_chunk < -1 or m.vocab_multiple < 0:
    raise ConfigError(f"model.logits_chunk={m.logits_chunk}, model.vocab_multiple={m.vocab_multiple}: "
                      "logits_chunk is positions per tile, 0 (auto) or -1 (dense); vocab_multiple >= 0")
  for key in ("attention_block_q", "attention_block_kv"):
    if m[key] < 1:
      raise ConfigError(f"model.{key}={m[key]} must be a positive block length (e.g. 512)")
  if d.batch_size % t.grad_accum:
    raise ConfigError(f"data.batch_size={d.batch_size} is not divisible by train.grad_accum={t.grad_accum}")
  if t.profile_steps:
    parts = t.profile_steps.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or int(parts[0]) >= int(parts[1]):
      raise ConfigError(f"train.profile_steps={t.profile_steps!r}; write START:STOP with START < STOP (e.g. 10:15 "
                        "traces steps 11 to 15)")
  if o.schedule not in ("cosine", "linear", "constant"):
    raise ConfigError(f"optim.schedule={o.schedule!r}; choose cosine, linear or constant")
  if not config.objectives:
    raise ConfigError("config.objectives is empty; list at least one, e.g. [dict(name='ntp', weight=1.0)]")
  for i, obj in enumerate(config.objectives):
    if "name" not in obj:
      raise ConfigError(f"config.objectives[{i}]={dict(obj)} has no 'name'")


ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash", "pallas_gpu")


def resolve_backend_defaults(config: ml_collections.ConfigDict, backend: str) -> ml_collections.ConfigDict:
  """Replace `auto` model settings with concrete ones for `backend` (cpu, gpu, tpu), and loss-weight schedules
  given at fractions of train.steps with step boundaries (`resolve_weight`); returns a copy.

  CPU: float32 compute and fully unrolled layers (a rolled scan measured ~35% slower per step there).
  TPU/GPU: bfloat16 compute and a rolled scan, so compile time stays flat in depth. Attention: the fused
  kernel with segment ids (TPU splash, GPU Pallas/Triton flash); XLA ops on CPU.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  m = config.model
  accel = backend in ("gpu", "tpu", "cuda", "rocm")
  if m.dtype == "auto":
    m.dtype = "bfloat16" if accel else "float32"
  if m.scan_unroll == 0:
    m.scan_unroll = 1 if accel else m.num_layers
  if not m.vocab_multiple:
    m.vocab_multiple = 128 if accel else 8  # TPU lanes / GPU tensor-core tiles; 8 lets `tensor` split it on CPU
  if m.attention_impl == "auto":
    m.attention_impl = {"tpu": "splash", "gpu": "pallas_gpu", "cuda": "pallas_gpu"}.get(backend, "xla")
  if m.attention_impl in ("splash", "pallas_gpu") and not accel:
    m.attention_interpret = True  # asked for by name on CPU: Pallas' interpreter (slow; for numerics)
  config.objectives = [resolve_weight(o, config.train.steps) for o in config.objectives]
  return config


def resolve_weight(objective: dict, steps: int) -> dict:
  """An objective entry whose step-schedule weight gives `at` (fractions of train.steps) with its `boundaries`
  set from `steps`: a schedule that follows the run's own length when a benchmark or override changes it."""
  weight = objective.get("weight")
  if not isinstance(weight, dict) or "at" not in weight:
    return dict(objective)
  at = list(weight["at"])
  if weight.get("kind") != "step" or not all(0 < f < 1 for f in at):
    raise ConfigError(f"objective {objective.get('name')!r}: weight {dict(weight)} gives `at` (fractions of "
                      "train.steps, each between 0 and 1) only with kind 'step'")
  return dict(objective, weight=dict(weight, boundaries=[int(f * steps) for f in at]))


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str, extend=None) -> ml_collections.ConfigDict:
  """A saved run config, merged onto the base config (and, with `extend(config)`, its family's section) so
  later-added fields get their defaults."""
  saved = json.loads(text)
  config = base_config()
  if extend is not None:
    config.model.family = saved.get("model", {}).get("family", config.model.family)
    extend(config)
  for section, value in saved.items():
    if isinstance(value, dict) and section in config and isinstance(config[section], ml_collections.ConfigDict):
      for k, v in value.items():
        if k in config[section]:
          config[section][k] = float(v) if isinstance(config[section][k], float) and isinstance(v, int) else v
        else:
          config[section][k] = v  # a field this version no longer has; keep it rather than guess
    else:
      config[section] = value
  return config
