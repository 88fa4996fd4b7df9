"""Hugging Face interop against transformers itself: tiny random Llama, Mistral, Qwen2, Qwen3 and GPT-2 models
built here (no download), imported, compared logit for logit, decoded greedily, exported and loaded back."""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from lm.data import tokenizers as tokenizers_lib  # noqa: E402
from lm.errors import ConfigError  # noqa: E402
from lm.interop import convert, workdirs  # noqa: E402
from lm.train import run as run_lib  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = (ROOT / "README.md").read_text().splitlines()
ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gpt2")


def save_tokenizer(directory, with_bos: bool):
  """A byte-level BPE trained here, saved as transformers saves one: with a bos added by its post-processor
  (Llama 3's way) or with none (GPT-2's and Qwen's)."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  specials = ["<|begin_of_text|>", "<|end_of_text|>"] if with_bos else ["<|endoftext|>"]
  tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  if with_bos:
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                                eos_token="<|end_of_text|>")
  else:
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
  fast.save_pretrained(directory)
  return fast


def hf_config(arch: str, tok):
  ids = dict(bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
             eos_token_id=tok.eos_token_id, initializer_range=0.2)
  llama_like = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=128, **ids)
  if arch == "llama":  # Llama 3.1's RoPE scaling, GQA, untied head
    return transformers.LlamaConfig(vocab_size=len(tok), rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16), **llama_like)
  if arch == "mistral":  # a sliding window shorter than the test sequences
    return transformers.MistralConfig(vocab_size=len(tok), sliding_window=8, **llama_like)
  if arch == "qwen2":  # QKV biases, tied head, more embedding rows than tokens (as Qwen's 151936 vs 151665)
    return transformers.Qwen2Config(vocab_size=len(tok) + 13, tie_word_embeddings=True, **llama_like)
  if arch == "qwen3":  # QK-norm, a head width other than hidden / heads
    return transformers.Qwen3Config(vocab_size=len(tok), head_dim=32, **llama_like)
  return transformers.GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=128, **ids)


def build_hf(arch: str, directory, max_shard_size=None):
  tok = save_tokenizer(directory, with_bos=arch in ("llama", "mistral"))
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(hf_config(arch, tok), attn_implementation="eager").eval()
  with torch.no_grad():  # every weight away from its init (biases and norms are 0 and 1 there)
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(directory, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
  return model, tok


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """arch -> (HF model, HF tokenizer, HF dir, imported workdir), built once for the module."""
  cache = {}

  def get(arch):
    if arch not in cache:
      base = tmp_path_factory.mktemp(arch)
      model, tok = build_hf(arch, base / "hf")
      workdirs.import_hf(base / "hf", base / "run")
      cache[arch] = (model, tok, base / "hf", base / "run")
    return cache[arch]
  return get


def hf_logits(model, ids) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(np.asarray(ids))).logits.numpy()


def our_logits(run, params, batch) -> np.ndarray:
  out = run.model.apply({"params": params}, {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()},
                        with_heads=False)
  return np.asarray(out.logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_transformers_unpacked_and_packed(imported, arch):
  model, _, _, workdir = imported(arch)
  run, params = run_lib.restore_for_inference(workdir)
  V = model.config.vocab_size
  rng = np.random.default_rng(1)
  ids = rng.integers(0, V, size=(2, 40))
  ref = hf_logits(model, ids)
  got = our_logits(run, params, {"inputs": ids})
  assert got.shape[-1] >= V and np.all(got[..., V:] < -1e8)  # padding rows of the table are masked out
  np.testing.assert_allclose(got[..., :V], ref, atol=1e-4, rtol=0)
  # Packed: two documents in one row (segments, positions restarting) score as each alone does in transformers.
  a, b = ids[0, :15], ids[1, :25]
  packed = dict(inputs=np.concatenate([a, b])[None], segment_ids=np.array([[1] * 15 + [2] * 25]),
                positions=np.concatenate([np.arange(15), np.arange(25)])[None])
  got = our_logits(run, params, packed)[0, :, :V]
  np.testing.assert_allclose(got[:15], hf_logits(model, a[None])[0], atol=1e-4, rtol=0)
  np.testing.assert_allclose(got[15:], hf_logits(model, b[None])[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_and_export_round_trip(imported, arch, tmp_path):
  model, tok, _, workdir = imported(arch)
  run, params = run_lib.restore_for_inference(workdir)
  prompt = "The model reads"
  ours = run.sample(params, prompt, max_new=32, temperature=0.0)
  enc = tok(prompt, return_tensors="pt")
  assert enc.input_ids[0].tolist() == run.tokenizer.prompt_ids(prompt).tolist()  # a bos only where HF adds one
  with torch.no_grad():
    out = model.generate(**enc, max_new_tokens=32, do_sample=False, pad_token_id=tok.eos_token_id)
  assert ours == tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)

  workdirs.export_hf(workdir, tmp_path / "out", max_shard_bytes=20_000)  # several shards and an index
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  ids = np.random.default_rng(2).integers(0, len(tok), size=(2, 24))
  np.testing.assert_allclose(hf_logits(back, ids), hf_logits(model, ids), atol=1e-4, rtol=0)
  back_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  text = "Bits per byte, at equal FLOPs."
  assert back_tok(text).input_ids == tok(text).input_ids


def test_sharded_checkpoint_imports_as_the_unsharded_one(imported, tmp_path):
  _, _, hf_dir, workdir = imported("qwen2")
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
  model.save_pretrained(tmp_path / "hf", max_shard_size="30KB")
  for name in ("tokenizer.json", "tokenizer_config.json"):
    (tmp_path / "hf" / name).write_bytes((hf_dir / name).read_bytes())
  index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 2
  workdirs.import_hf(tmp_path / "hf", tmp_path / "run")
  _, a = run_lib.restore_for_inference(workdir)
  _, b = run_lib.restore_for_inference(tmp_path / "run")
  flat_a, flat_b = convert.flatten(a), convert.flatten(b)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]))


MESH_SCRIPT = """
import sys, numpy as np, jax, jax.numpy as jnp
from lm.interop import workdirs
from lm.train import run as run_lib
workdirs.import_hf(sys.argv[1], sys.argv[2], ["mesh.data=1", "mesh.fsdp=8", "mesh.tensor=1"])
run, params = run_lib.restore_for_inference(sys.argv[2])
assert dict(run.mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}, run.mesh.shape
sharded = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(params))
ids = np.load(sys.argv[3])
from lm import parallel
with parallel.activation_context(run.mesh):
  batch = run.put_batch({"inputs": ids.astype(np.int32)})
  logits = jax.jit(lambda p, b: run.model.apply({"params": p}, b, with_heads=False).logits)(params, batch)
np.save(sys.argv[4], parallel.to_host(logits))
print("sharded leaves", sharded)
"""


def test_import_onto_an_8_device_mesh_gives_the_same_logits(imported, tmp_path):
  model, _, hf_dir, _ = imported("llama")
  ids = np.random.default_rng(3).integers(0, model.config.vocab_size, size=(8, 24))
  np.save(tmp_path / "ids.npy", ids)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(hf_dir), str(tmp_path / "run"),
                         str(tmp_path / "ids.npy"), str(tmp_path / "out.npy")],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert int(proc.stdout.split("sharded leaves")[-1]) > 0  # written sharded, not replicated
  got = np.load(tmp_path / "out.npy")[..., :model.config.vocab_size]
  np.testing.assert_allclose(got, hf_logits(model, ids), atol=1e-4, rtol=0)


def test_hf_tokenizer_directory_keeps_the_exact_vocabulary(imported):
  _, tok, hf_dir, _ = imported("llama")
  ours = tokenizers_lib.build_tokenizer(str(hf_dir), [], 0)
  assert ours.kind == "hf" and ours.vocab_size == len(tok)  # no id added for pad
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (tok.bos_token_id, tok.eos_token_id, tok.eos_token_id)
  text = "Bits per byte stay exact: ünïcode too."
  assert ours.encode(text.encode()).tolist() == tok(text, add_special_tokens=False).input_ids
  assert ours.prompt_ids(text).tolist() == tok(text).input_ids  # its post-processor's bos, once
  ids = ours.encode(text.encode())
  assert int(ours.unit_bytes()[ids].sum()) == len(text.encode())
  _, gpt_tok, gpt_dir, _ = imported("gpt2")
  gpt = tokenizers_lib.build_tokenizer(str(gpt_dir), [], 0)
  assert gpt.vocab_size == len(gpt_tok) and gpt.bos_id == gpt.eos_id == gpt_tok.eos_token_id  # no bos token
  assert gpt.prompt_ids(text).tolist() == gpt_tok(text).input_ids  # nothing prepended
  back = tokenizers_lib.tokenizer_from_files(ours.files())
  assert back.files() == ours.files() and back.prompt_ids(text).tolist() == ours.prompt_ids(text).tolist()


def test_tiktoken_file_is_refused_in_one_line(tmp_path):
  path = tmp_path / "tokenizer.model"
  path.write_text("IQ== 0\nIg== 1\n")
  with pytest.raises(Exception, match="tiktoken BPE file"):
    tokenizers_lib.build_tokenizer(str(path), [], 0)


@pytest.mark.parametrize("change, field", [
    (dict(model_type="mixtral"), "model_type='mixtral'"),
    (dict(rope_parameters=dict(rope_type="yarn", rope_theta=1e4, factor=4.0)), "rope_type='yarn'"),
    (dict(model_type="qwen2", use_sliding_window=True), "use_sliding_window=True"),
    (dict(num_local_experts=8), "num_local_experts=8"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
])
def test_unsupported_options_fail_in_one_line_before_writing(imported, tmp_path, change, field):
  _, _, hf_dir, _ = imported("llama")
  bad = tmp_path / "bad"
  bad.mkdir()
  for p in hf_dir.iterdir():
    (bad / p.name).write_bytes(p.read_bytes())
  config = json.loads((bad / "config.json").read_text())
  config.update(change)
  (bad / "config.json").write_text(json.dumps(config))
  with pytest.raises(ConfigError, match=field.replace("(", r"\(")) as e:
    workdirs.import_hf(bad, tmp_path / "run")
  assert "\n" not in str(e.value)
  assert not (tmp_path / "run").exists()


def test_export_refuses_what_has_no_hf_form():
  import ml_collections
  from lm.interop import hf
  m = ml_collections.ConfigDict(dict(family="token", positions="rope", norm="layer", mlp="swiglu", norm_bias=False,
                                     qk_norm=False, sliding_window=0, qkv_bias=False, out_bias=False, mlp_bias=False))
  with pytest.raises(ConfigError, match="model.norm='layer'"):
    hf.export_kind(m)


@pytest.mark.slow
def test_cli_import_eval_sample_and_fine_tune_from_it(imported, tmp_path, capsys):
  """`lm import hf`, `lm eval`, `lm sample --temperature 0` (transformers' greedy text), training refused in the
  import's own workdir, `finetune_mtp` from the import (trunk as imported, heads fresh) and `rho` with a
  Hugging Face reference."""
  from lm import cli
  from lm.train import checkpoint
  model, tok, hf_dir, _ = imported("qwen2")
  w = tmp_path / "w"
  assert cli.main(["import", "hf", str(hf_dir), "--workdir", str(w)]) == 0
  assert cli.main(["eval", str(w)]) == 0
  assert float(capsys.readouterr().out.split("bpb: ")[1].split()[0]) > 0
  prompt = "Bits per byte"
  assert cli.main(["sample", str(w), "--prompt", prompt, "--temperature", "0", "--max-new", "32"]) == 0
  enc = tok(prompt, return_tensors="pt")
  with torch.no_grad():
    out = model.generate(**enc, max_new_tokens=32, do_sample=False, pad_token_id=tok.eos_token_id)
  assert capsys.readouterr().out.rstrip("\n") == prompt + tok.decode(out[0, enc.input_ids.shape[1]:],
                                                                      skip_special_tokens=True)

  assert cli.main(["train", "token_ntp:tiny", "--workdir", str(w)]) == 2
  assert "--config.init_from=" in capsys.readouterr().err

  f = tmp_path / "ft"
  assert cli.main(["train", "finetune_mtp:tiny", f"--config.init_from={w}", "--workdir", str(f),
                   "--config.train.steps=1", "--config.optim.lr=1e-12", "--config.sample.max_new=0"]) == 0
  assert "fresh: mtp_head" in capsys.readouterr().out
  _, imported_params = run_lib.restore_for_inference(w)
  _, tuned = run_lib.restore_for_inference(f)
  tuned = convert.flatten(tuned)
  for path, value in convert.flatten(imported_params).items():  # lr 1e-12 (0 is refused): the trunk is the import
    np.testing.assert_allclose(np.asarray(tuned[path]), np.asarray(value), rtol=0, atol=1e-10)
  assert any(p.startswith("mtp_head/") for p in tuned)
  assert checkpoint.latest_step(f) == 1

  r = tmp_path / "rho"
  assert cli.main(["train", "token_rho:tiny", f"--config.init_from={hf_dir}", "--workdir", str(r),
                   f"--config.objectives.0.reference={hf_dir}", "--config.train.steps=2",
                   "--config.sample.max_new=0"]) == 0
  assert checkpoint.latest_step(r) == 2


def test_a_tied_model_with_a_head_copy_imports_and_mismatched_weights_fail_in_one_line(imported, tmp_path):
  from lm.errors import CheckpointError
  from lm.interop import safetensors
  model, _, hf_dir, _ = imported("qwen2")  # tied
  reader = safetensors.Reader(hf_dir)
  names = reader.names()
  tensors = [(n, reader.get(n).shape, np.float32, lambda n=n: np.asarray(reader.get(n))) for n in names]
  emb = "model.embed_tokens.weight"
  tensors.append(("lm_head.weight", reader.get(emb).shape, np.float32, lambda: np.asarray(reader.get(emb))))
  copy = tmp_path / "copy"
  safetensors.write(copy, tensors)
  for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
    (copy / name).write_bytes((hf_dir / name).read_bytes())
  workdirs.import_hf(copy, tmp_path / "run")
  run, params = run_lib.restore_for_inference(tmp_path / "run")
  ids = np.random.default_rng(4).integers(0, model.config.vocab_size, size=(1, 12))
  np.testing.assert_allclose(our_logits(run, params, {"inputs": ids})[..., :model.config.vocab_size],
                             hf_logits(model, ids), atol=1e-4, rtol=0)
  config = json.loads((copy / "config.json").read_text())
  config["intermediate_size"] += 8
  (copy / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match="weights and config.json disagree") as e:
    workdirs.import_hf(copy, tmp_path / "run2")
  assert "\n" not in str(e.value) and not (tmp_path / "run2" / "checkpoints").exists()


@pytest.mark.slow
def test_a_model_trained_here_exports_as_llama(tmp_path):
  from lm import config as config_lib
  from lm.train import loop
  config = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(config, ["data.tokenizer=bpe", "data.vocab_size=300", "train.steps=2",
                                      "train.eval_every=0", "sample.max_new=0", "model.num_kv_heads=2"])
  loop.train(config, tmp_path / "run")
  summary = workdirs.export_hf(tmp_path / "run", tmp_path / "hf")
  assert summary["kind"] == "llama" and summary["tokenizer"]
  run, params = run_lib.restore_for_inference(tmp_path / "run")
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  text = "def main():\n    return 1\n"
  ids = tok(text).input_ids
  assert ids == run.tokenizer.prompt_ids(text).tolist()  # transformers adds the bos our model reads first
  V = run.tokenizer.vocab_size
  np.testing.assert_allclose(hf_logits(back, [ids]), our_logits(run, params, {"inputs": np.array([ids])})[..., :V],
                             atol=1e-4, rtol=0)
