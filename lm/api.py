"""The Python API: `lm.load(workdir)` for a trained run, `lm.build(experiment, **overrides)` for a fresh one.

    import lm
    r = lm.load("runs/ntp_tiny")
    r.evaluate(split="val")["bpb"]              # the dict `lm eval` writes
    r.sample("The ", max_new=50, temperature=0.0)
    r.params, r.model, r.config

    r = lm.build("token_ntp:tiny", **{"model.d_model": 64})   # untrained: params from the init
    outputs = r(r.example_batch(2))             # ModelOutputs: logits [2, T, V], aux

The command line (`lm eval`, `lm sample`, ...) is a thin layer over these.
"""

from __future__ import annotations

from typing import Any

import ml_collections

import jax

from lm import families
from lm.data import corpus, noise as noise_lib
from lm.data.tokenizers import ByteTokenizer
from lm.errors import CheckpointError
from lm.train import run as run_lib


class LM:
  """A run with its params: evaluate, sample, or call the model on a batch. `data` loads on first use."""

  def __init__(self, run, params, step: int = 0, workdir: str | None = None, data=None):
    self.run, self.params, self.step, self.workdir, self._data = run, params, step, workdir, data
    self._applies = {}

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.run.config

  @property
  def model(self):
    return self.run.model

  @property
  def tokenizer(self):
    return self.run.tokenizer

  @property
  def family(self) -> families.Family:
    return self.run.family

  @property
  def data(self):
    if self._data is None:
      self._data = self.run.load_data()
    return self._data

  def __repr__(self) -> str:
    where = f" from {self.workdir} step {self.step}" if self.workdir else " (untrained)"
    return f"<lm.LM {self.config.experiment!r} family={self.config.model.family!r}{where}>"

  def __call__(self, batch: dict, **kwargs):
    """The model's forward on a batch (`ModelOutputs`), jitted; kwargs go to `model.apply` (e.g. with_heads)."""
    key = tuple(sorted(kwargs.items()))
    if key not in self._applies:
      self._applies[key] = jax.jit(lambda params, b: self.model.apply({"params": params}, b, **kwargs))
    return self._applies[key](self.params, batch)

  def example_batch(self, rows: int = 1) -> dict:
    """A batch of zeros in the family's batch layout."""
    return self.run.example_batch(rows)

  def evaluate(self, split: str = "val", data: str | None = None, noise: str | None = None) -> dict:
    """Bits per byte, FLOPs per byte (and the family's extras) of `split`, of another text source `data`
    (scored with this run's tokenizer), and/or of the text noised by `noise` (`KIND:RATE`)."""
    if noise:
      noise_lib.parse(noise)  # a bad spec fails before anything loads
    docs = corpus.load_documents(data) if data else None
    if noise:
      docs = noise_lib.noised(docs if docs is not None else self.data.splits[split], noise)
    result = run_lib.evaluate(self.run, self.params, self.data, split, docs)
    result.update(split=split, data=data or self.config.data.source, noise=noise or None)
    return result

  def evaluate_byte_exact(self, split: str = "val", segments: int = 32, beam: int = 16) -> dict:
    """Canonical and byte-exact bits per byte (tokenizations summed: the `beam` most probable of each prefix
    and the canonical one; 0 sums all, exponential in length) of the first `segments` held-out segments of
    `split` (`lm.eval.byte_exact`; token models)."""
    from lm.eval import byte_exact  # pylint: disable=import-outside-toplevel
    return byte_exact.evaluate(self.run, self.params, self.data, split, segments, beam)

  def byte_model(self, beam: int = 0):
    """The byte-level view of this token model (`lm.decoding.bytes.ByteModel`): `prefix_log_prob(b)`,
    `text_log_prob(b)`, `next_byte_log_probs(b)` ([257]: bytes then the end event). Two of them, from runs
    with different tokenizers, ensemble with `lm.decoding.bytes.ensemble_next_byte_log_probs`."""
    from lm.eval import byte_exact  # pylint: disable=import-outside-toplevel
    return byte_exact.byte_model(self.run, self.params, beam)

  def sample(self, prompt: str | None = None, max_new: int | None = None, temperature: float | None = None,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> str:
    """The continuation of `prompt` (text; the prompt itself is not repeated). Unset options take the
    config's `sample` section."""
    s = self.config.sample
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return self.run.sample(self.params, pick(prompt, s.prompt), max_new=int(pick(max_new, s.max_new)),
                           temperature=float(pick(temperature, s.temperature)), top_k=int(pick(top_k, s.top_k)),
                           top_p=float(pick(top_p, s.top_p)), seed=int(pick(seed, s.seed)))

  def decode(self, prompt: str, method: str, **options) -> dict:
    """A sequence-level method on `prompt`: beam, diverse-beam, power (MH), power-smc, smc (with regex=...),
    mbr, or a registered one (`lm.decoding.methods.register`; a dotted name is imported); options are the
    method's own (`lm.decoding.methods.get(method).options`) and max_new, seed. Returns {outputs: [{text,
    units, log_p, ...}], chosen, stats}; `outputs[chosen]["text"]` is the continuation."""
    from lm.decoding import methods  # pylint: disable=import-outside-toplevel
    methods.resolve(method, options)  # unknown method or options: one line, before anything runs
    family = families.require(self.family, families.UnitDecoder, f"--method {method}", self.config)
    return methods.decode(family.unit_decoder(self.run), self.run.model, self.params, self.run.tokenizer, prompt,
                          method, options)

  def speculative(self, prompt: str, max_new: int = 200) -> tuple[str, dict]:
    """Greedy self-speculative decoding with the run's own heads: (text, accepted-units stats)."""
    return self.run.speculative(self.params, prompt, max_new)


def load(workdir: str, trust_code: bool = False) -> LM:
  """The newest good checkpoint of a trained run (its own config and tokenizer), on the local devices. A run
  whose config names a family or objective outside lm is refused unless `trust_code=True`: loading it would
  import, and so run, that module."""
  restored = run_lib.restore_saved(workdir, trust_code=bool(trust_code))
  if restored is None:
    raise CheckpointError(f"workdir {str(workdir)!r} holds no checkpoint that restores; train first with "
                          f"`lm train EXPERIMENT --workdir {workdir}`")
  return LM(restored.run, restored.params, step=restored.step, workdir=str(workdir))


def build(experiment: str, seed: int | None = None, **overrides: Any) -> LM:
  """A fresh (untrained) run of `experiment` with Python-valued dotted `overrides` (`**{"model.d_model": 64}`),
  params from its init (`train.seed`, or `seed`)."""
  config = families.load_config(experiment, overrides)
  data = None
  if config.data.tokenizer == "bytes":
    tokenizer = ByteTokenizer()
  else:  # the tokenizer is trained on (or read for) the config's data
    data = families.get(config.model.family).load_data(config)
    tokenizer = data.tokenizer
  run = run_lib.build_run(config, tokenizer)
  state = run.init(config.train.seed if seed is None else seed)
  return LM(run, state.params, data=data)
