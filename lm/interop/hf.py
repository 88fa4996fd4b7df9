"""Hugging Face architectures as `config.model` options, and their tensors as this framework's params.

`model_fields(config.json)` gives the token family's options for Llama 2/3/3.1, Mistral, Qwen2/2.5, Qwen3 and
GPT-2 (anything else fails in one line naming the field); `rules(kind, cfg)` lists, for each Hugging Face
tensor, the params it becomes and the two conversions. HF's `nn.Linear` stores [out, in], GPT-2's `Conv1D`
[in, out]; ours are [in, ...] with heads split out ([D, H, E] for a query projection).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

from lm.errors import ConfigError

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "gpt2": "GPT2LMHeadModel"}
# Buffers some checkpoints carry that are functions of the config, not weights.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "attn.bias", "attn.masked_bias")


def _unsupported(field: str, value, what: str) -> ConfigError:
  return ConfigError(f"config.json: {field}={value!r} is not supported ({what}); docs/interop.md "
                     "lists what is")


def _rope(hf: dict) -> dict:
  params = hf.get("rope_parameters") or {}
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))
  spec = hf.get("rope_scaling") or params  # as transformers: a legacy rope_scaling wins
  kind = spec.get("rope_type", spec.get("type", "default"))
  if float(hf.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0))) != 1.0:
    raise _unsupported("partial_rotary_factor", hf.get("partial_rotary_factor"), "RoPE on whole heads only")
  if kind == "default":
    return dict(rope_base=theta, rope_scaling="none")
  if kind == "linear":
    return dict(rope_base=theta, rope_scaling="linear", rope_factor=float(spec["factor"]))
  if kind == "llama3":
    return dict(rope_base=theta, rope_scaling="llama3", rope_factor=float(spec["factor"]),
                rope_low_freq_factor=float(spec["low_freq_factor"]),
                rope_high_freq_factor=float(spec["high_freq_factor"]),
                rope_original_positions=int(spec.get("original_max_position_embeddings")
                                            or hf.get("max_position_embeddings") or 8192))
  raise _unsupported("rope_scaling.rope_type", kind, "default, linear or llama3")


def model_fields(hf: dict) -> dict:
  """`config.model` values for a Hugging Face `config.json`; a missing field is one line naming it."""
  try:
    return _model_fields(hf)
  except KeyError as e:
    raise ConfigError(f"config.json has no {e.args[0]!r}, which a {hf.get('model_type')} model needs; fix the "
                      "file") from None


def _model_fields(hf: dict) -> dict:
  kind = hf.get("model_type")
  if kind not in ARCHITECTURES:
    raise _unsupported("model_type", kind, f"one of {', '.join(ARCHITECTURES)}")
  for key in ("num_experts", "num_local_experts", "n_routed_experts"):
    if hf.get(key):
      raise _unsupported(key, hf[key], "mixture-of-experts layers")
  if kind == "gpt2":
    return _gpt2_fields(hf)
  if hf.get("hidden_act", "silu") != "silu":
    raise _unsupported("hidden_act", hf.get("hidden_act"), "SwiGLU with silu")
  heads, width = hf["num_attention_heads"], hf["hidden_size"]
  # Which config flags each architecture honours (its modeling file): Llama both biases flags, Qwen3 the
  # attention one (q/k/v/o), Qwen2 always q/k/v biases and never others, Mistral none.
  bias = bool(hf.get("attention_bias", False)) and kind in ("llama", "qwen3")
  head_dim = hf.get("head_dim") or (128 if kind == "qwen3" else width // heads)  # Qwen3Config's default
  out = dict(d_model=width, num_layers=hf["num_hidden_layers"], num_heads=heads,
             num_kv_heads=hf.get("num_key_value_heads") or heads, d_ff=hf["intermediate_size"],
             head_dim=head_dim, norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
             tie_embeddings=bool(hf.get("tie_word_embeddings", False)), mlp="swiglu", positions="rope", norm="rms",
             norm_bias=False, qkv_bias=bias or kind == "qwen2", out_bias=bias,
             mlp_bias=bool(hf.get("mlp_bias", False)) and kind == "llama", qk_norm=kind == "qwen3",
             sliding_window=0, vocab_size=hf["vocab_size"], **_rope(hf))
  if kind == "mistral":
    out["sliding_window"] = int(hf.get("sliding_window") or 0)
  elif hf.get("use_sliding_window"):
    raise _unsupported("use_sliding_window", True, "sliding windows on some layers only")
  if "sliding_attention" in (hf.get("layer_types") or []) and kind != "mistral":
    raise _unsupported("layer_types", "sliding_attention", "sliding windows on some layers only")
  return out


def _gpt2_fields(hf: dict) -> dict:
  act = hf.get("activation_function", "gelu_new")
  mlp = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(act)
  if mlp is None:
    raise _unsupported("activation_function", act, "gelu_new, gelu_pytorch_tanh or gelu")
  if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
    raise _unsupported("scale_attn_by_inverse_layer_idx", True, "attention scaled by 1/sqrt(head width) only")
  if not hf.get("tie_word_embeddings", True):
    raise _unsupported("tie_word_embeddings", False, "GPT-2's head is its embedding")
  width, heads = hf["n_embd"], hf["n_head"]
  return dict(d_model=width, num_layers=hf["n_layer"], num_heads=heads, num_kv_heads=heads,
              d_ff=hf.get("n_inner") or 4 * width, head_dim=width // heads,
              norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), tie_embeddings=True, mlp=mlp,
              positions="learned", max_positions=hf["n_positions"], norm="layer", norm_bias=True, qkv_bias=True,
              out_bias=True, mlp_bias=True, qk_norm=False, sliding_window=0, vocab_size=hf["vocab_size"],
              rope_scaling="none")


def context_length(hf: dict) -> int:
  return int(hf.get("n_positions") or hf.get("max_position_embeddings") or 2048)


def export_kind(m) -> str:
  """The Hugging Face architecture a token-family model is (`config.model`), or one line on what is not."""
  def need(field, value, kind):
    if m[field] != value:
      raise ConfigError(f"model.{field}={m[field]!r} has no {kind} equivalent (it needs {value!r}); only the "
                        "architectures in docs/interop.md")
  from lm import families  # pylint: disable=import-outside-toplevel
  if not families.get(m.family).hf_decoder:
    raise ConfigError(f"model.family={m.family!r} has no Hugging Face form; only the token family exports")
  if m.positions == "learned":
    for field, value in (("norm", "layer"), ("norm_bias", True), ("qkv_bias", True), ("out_bias", True),
                         ("mlp_bias", True), ("tie_embeddings", True), ("qk_norm", False), ("sliding_window", 0),
                         ("num_kv_heads", m.num_heads), ("head_dim", m.head_dim and m.d_model // m.num_heads)):
      need(field, value, "GPT-2")
    if m.mlp not in ("gelu", "gelu_tanh"):
      need("mlp", "gelu_tanh", "GPT-2")
    return "gpt2"
  for field, value in (("norm", "rms"), ("mlp", "swiglu"), ("norm_bias", False)):
    need(field, value, "Llama-style")
  if m.qk_norm:
    for field, value in (("qkv_bias", m.out_bias), ("mlp_bias", False), ("sliding_window", 0)):
      need(field, value, "Qwen3")
    return "qwen3"
  if m.sliding_window:
    for field in ("qkv_bias", "out_bias", "mlp_bias"):
      need(field, False, "Mistral")
    return "mistral"
  if m.qkv_bias and not m.out_bias and not m.mlp_bias:
    return "qwen2"
  need("out_bias", m.qkv_bias, "Llama")
  return "llama"


def hf_config(kind: str, m, vocab_size: int, context: int, bos_id: int, eos_id: int) -> dict:
  """config.json for a model of `config.model` m exported as `kind`."""
  common = dict(architectures=[ARCHITECTURES[kind]], model_type=kind, vocab_size=vocab_size, bos_token_id=bos_id,
                eos_token_id=eos_id, tie_word_embeddings=bool(m.tie_embeddings), dtype="float32")
  if kind == "gpt2":
    return dict(common, n_embd=m.d_model, n_layer=m.num_layers, n_head=m.num_heads, n_inner=m.d_ff,
                n_positions=context, layer_norm_epsilon=m.norm_eps, scale_attn_weights=True,
                activation_function="gelu_new" if m.mlp == "gelu_tanh" else "gelu", resid_pdrop=0.0,
                embd_pdrop=0.0, attn_pdrop=0.0)
  rope = dict(rope_type="default", rope_theta=float(m.rope_base))
  if m.rope_scaling == "linear":
    rope.update(rope_type="linear", factor=m.rope_factor)
  elif m.rope_scaling == "llama3":
    rope.update(rope_type="llama3", factor=m.rope_factor, low_freq_factor=m.rope_low_freq_factor,
                high_freq_factor=m.rope_high_freq_factor, original_max_position_embeddings=m.rope_original_positions)
  out = dict(common, hidden_size=m.d_model, num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
             num_key_value_heads=m.num_kv_heads, intermediate_size=m.d_ff,
             head_dim=m.head_dim or m.d_model // m.num_heads, hidden_act="silu", rms_norm_eps=m.norm_eps,
             max_position_embeddings=context, rope_parameters=rope, rope_theta=float(m.rope_base),
             attention_dropout=0.0)
  if kind == "llama":
    out.update(attention_bias=bool(m.qkv_bias), mlp_bias=bool(m.mlp_bias))
  if kind == "qwen3":
    out.update(attention_bias=bool(m.qkv_bias))
  if kind == "mistral":
    out.update(sliding_window=m.sliding_window)
  if kind in ("qwen2", "qwen3"):
    out.update(use_sliding_window=False, sliding_window=None, max_window_layers=m.num_layers)
  return out


# ---------------------------------------------------------------------------------------------------------
# Tensors.

@dataclasses.dataclass(frozen=True)
class Rule:
  """One Hugging Face tensor (`{i}`: the layer) <-> the params `ours` (under `decoder/layers` when `layer`)."""
  hf: str
  ours: tuple[str, ...]
  to_ours: Callable  # (hf array, cfg) -> tuple of arrays, one per path in `ours`
  to_hf: Callable    # (*our arrays, cfg) -> the hf array
  layer: bool = True


def _heads(kv: bool):
  return lambda c: c.num_kv_heads if kv else c.num_heads


def _linear(path: str, name: str, heads=None) -> Rule:
  """nn.Linear [out, in] -> [in, out] (or [in, heads, E] for a projection onto heads)."""
  if heads is None:
    return Rule(name, (path,), lambda w, c: (w.T,), lambda k, c: k.T)
  return Rule(name, (path,), lambda w, c: (w.T.reshape(c.d_model, heads(c), c.head_width),),
              lambda k, c: k.reshape(c.d_model, -1).T)


def _head_bias(path: str, name: str, heads) -> Rule:
  return Rule(name, (path,), lambda b, c: (b.reshape(heads(c), c.head_width),), lambda b, c: b.reshape(-1))


def _same(path: str, name: str, layer: bool = True) -> Rule:
  return Rule(name, (path,), lambda w, c: (w,), lambda w, c: w, layer)


def _vocab_rows(path: str, name: str) -> Rule:
  """The embedding [V, D], padded to the model's padded vocabulary with zero rows (masked out of every logit)."""
  return Rule(name, (path,), lambda w, c: (jnp.pad(_rows(w, c), ((0, c.padded_vocab - w.shape[0]), (0, 0))),),
              lambda e, c: e[:c.vocab_size], layer=False)


def _rows(w, c):
  if w.shape[0] != c.vocab_size:
    raise ValueError(f"{w.shape[0]} rows for a vocab_size of {c.vocab_size}")
  return w


def _llama_rules(c, kind: str) -> list[Rule]:
  a, p = "attn", "model.layers.{i}."
  rules = [_vocab_rows("embed/embedding", "model.embed_tokens.weight"),
           _same("final_norm/scale", "model.norm.weight", layer=False),
           _linear(f"{a}/query", p + "self_attn.q_proj.weight", _heads(False)),
           _linear(f"{a}/key", p + "self_attn.k_proj.weight", _heads(True)),
           _linear(f"{a}/value", p + "self_attn.v_proj.weight", _heads(True)),
           Rule(p + "self_attn.o_proj.weight", (f"{a}/out",),
                lambda w, c: (w.T.reshape(c.num_heads, c.head_width, c.d_model),),
                lambda o, c: o.reshape(-1, c.d_model).T),
           _linear("mlp/wi_0/kernel", p + "mlp.gate_proj.weight"), _linear("mlp/wi_1/kernel", p + "mlp.up_proj.weight"),
           _linear("mlp/wo/kernel", p + "mlp.down_proj.weight"),
           _same("attn_norm/scale", p + "input_layernorm.weight"),
           _same("mlp_norm/scale", p + "post_attention_layernorm.weight")]
  if c.qkv_bias:
    rules += [_head_bias(f"{a}/query_bias", p + "self_attn.q_proj.bias", _heads(False)),
              _head_bias(f"{a}/key_bias", p + "self_attn.k_proj.bias", _heads(True)),
              _head_bias(f"{a}/value_bias", p + "self_attn.v_proj.bias", _heads(True))]
  if c.out_bias:
    rules.append(_same(f"{a}/out_bias", p + "self_attn.o_proj.bias"))
  if c.mlp_bias:
    rules += [_same(f"mlp/{ours}/bias", p + f"mlp.{theirs}.bias")
              for ours, theirs in (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj"))]
  if c.qk_norm:
    rules += [_same(f"{a}/query_norm/scale", p + "self_attn.q_norm.weight"),
              _same(f"{a}/key_norm/scale", p + "self_attn.k_norm.weight")]
  if not c.tie_embeddings:
    rules.append(Rule("lm_head.weight", ("unembed/kernel/kernel",),
                      lambda w, c: (jnp.pad(_rows(w, c), ((0, c.padded_vocab - w.shape[0]), (0, 0))).T,),
                      lambda k, c: k[:, :c.vocab_size].T, layer=False))
  return rules


def _gpt2_rules(c) -> list[Rule]:
  p, a = "transformer.h.{i}.", "attn"
  qkv = (f"{a}/query", f"{a}/key", f"{a}/value")
  split = lambda w, c: tuple(x.reshape(c.d_model, c.num_heads, c.head_width) for x in jnp.split(w, 3, axis=1))  # noqa: E731
  join = lambda q, k, v, c: jnp.concatenate([x.reshape(c.d_model, -1) for x in (q, k, v)], axis=1)  # noqa: E731
  split_b = lambda b, c: tuple(x.reshape(c.num_heads, c.head_width) for x in jnp.split(b, 3))  # noqa: E731
  join_b = lambda q, k, v, c: jnp.concatenate([x.reshape(-1) for x in (q, k, v)])  # noqa: E731
  rules = [_vocab_rows("embed/embedding", "transformer.wte.weight"),
           _same("embed/positions", "transformer.wpe.weight", layer=False),
           _same("final_norm/scale", "transformer.ln_f.weight", layer=False),
           _same("final_norm/bias", "transformer.ln_f.bias", layer=False),
           Rule(p + "attn.c_attn.weight", qkv, split, join),
           Rule(p + "attn.c_attn.bias", tuple(f"{x}_bias" for x in qkv), split_b, join_b),
           Rule(p + "attn.c_proj.weight", (f"{a}/out",),
                lambda w, c: (w.reshape(c.num_heads, c.head_width, c.d_model),),
                lambda o, c: o.reshape(-1, c.d_model)),
           _same(f"{a}/out_bias", p + "attn.c_proj.bias"),
           _same("mlp/wi/kernel", p + "mlp.c_fc.weight"), _same("mlp/wi/bias", p + "mlp.c_fc.bias"),
           _same("mlp/wo/kernel", p + "mlp.c_proj.weight"), _same("mlp/wo/bias", p + "mlp.c_proj.bias")]
  for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
    rules += [_same(f"{ours}/scale", p + f"{theirs}.weight"), _same(f"{ours}/bias", p + f"{theirs}.bias")]
  return rules


def rules(kind: str, c) -> list[Rule]:
  """The tensor rules of architecture `kind` for a model of TransformerConfig `c`."""
  return _gpt2_rules(c) if kind == "gpt2" else _llama_rules(c, kind)


def kind_of(hf: dict) -> str:
  return hf.get("model_type", "")
