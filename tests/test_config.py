"""Config: experiments by name, dotted overrides, one-line errors naming the nearest valid key."""

import pytest

from lm import config as config_lib, families
from lm.errors import ConfigError


def test_experiment_by_name_and_by_path_with_variant():
  by_name = config_lib.load_experiment("token_ntp:tiny")
  by_path = config_lib.load_experiment(str(config_lib.experiments_dir() / "token_ntp.py") + ":tiny")
  assert by_name.to_dict() == by_path.to_dict()
  assert by_name.experiment == "token_ntp:tiny"
  assert config_lib.load_experiment("token_ntp").model.d_model > by_name.model.d_model


def test_default_experiment_is_about_125m_parameters():
  m = config_lib.load_experiment("token_ntp").model
  vocab = config_lib.load_experiment("token_ntp").data.vocab_size
  per_layer = 2 * m.d_model * m.d_model + 2 * m.d_model * m.d_model * m.num_kv_heads // m.num_heads \
      + 3 * m.d_model * m.d_ff
  total = m.num_layers * per_layer + vocab * m.d_model
  assert 110e6 < total < 140e6


def test_unknown_experiment_names_the_nearest():
  with pytest.raises(ConfigError, match="did you mean 'token_ntp'"):
    config_lib.load_experiment("token_ntpp")


@pytest.mark.parametrize("name, hint", [("token_ntpp", "did you mean 'token_ntp'? "), ("nonexistent", "")])
def test_experiment_suggestions_only_when_close(name, hint):
  with pytest.raises(ConfigError) as e:
    config_lib.load_experiment(name)
  assert str(e.value).startswith(f"unknown experiment {name!r}; {hint}`lm list` shows all")


@pytest.mark.parametrize("override, hint", [("model.d_modle=3", "did you mean config.model.d_model?"),
                                            ("zzz=1", "`lm config EXPERIMENT` prints every key")])
def test_key_suggestions_only_when_close(override, hint):
  with pytest.raises(ConfigError) as e:
    config_lib.apply_overrides(config_lib.base_config(), [override])
  assert str(e.value) == f"unknown config key config.{override.split('=')[0]}; {hint}"


def test_a_typo_inside_an_experiment_file_fails(tmp_path):
  (tmp_path / "typo.py").write_text(
      "from lm import families\n\ndef get_config(arg=None):\n  c = families.base_config()\n"
      "  c.model.d_modle = 64\n  return c\n")
  with pytest.raises(ConfigError, match=r"experiment 'typo' sets config.model.d_modle, which no config has; "
                     r"did you mean config.model.d_model\?"):
    families.load_config(str(tmp_path / "typo.py"))
  config = families.load_config("token_ntp:tiny")
  with pytest.raises(AttributeError):  # locked: code that adds a key by mistake fails too
    config.model.d_modle = 64


def test_list_fields_take_comma_separated_names():
  c = config_lib.apply_overrides(config_lib.base_config(), ["train.trackers=jsonl,wandb"])
  assert tuple(c.train.trackers) == ("jsonl", "wandb")


def test_overrides_parse_by_type():
  c = config_lib.base_config()
  config_lib.apply_overrides(c, ["model.d_model=64", "optim.lr=1", "model.scan_layers=false",
                                 "data.source=a.txt,b.txt", "objectives.0.weight=0.5",
                                 "objectives.0.z_loss=1e-4"])
  assert c.model.d_model == 64 and c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
  assert c.model.scan_layers is False and c.data.source == "a.txt,b.txt"
  assert c.objectives[0] == dict(name="ntp", weight=0.5, z_loss=1e-4)


@pytest.mark.parametrize("override, message", [
    ("model.d_modle=3", "did you mean config.model.d_model"),
    ("trian.steps=3", "did you mean config.train.steps"),
    ("model.d_model=wide", "expected an integer$"),
    ("optim.lr=fast", "expected a number$"),
    ("objectives.3.weight=1", "config.objectives has 1 entry, numbered from 0; '3' is not one of them"),
    ("model.scan_layers=maybe", "expected true or false"),
])
def test_bad_overrides_fail_with_one_line(override, message):
  with pytest.raises(ConfigError, match=message) as e:
    config_lib.apply_overrides(config_lib.base_config(), [override])
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("override, message", [
    ("model.num_kv_heads=3", "not a multiple"),
    ("model.head_dim=7", "must be even"),
    ("train.grad_accum=5", "not divisible by train.grad_accum"),
    ("model.dtype=float8", "choose float32"),
    ("model.mlp=relu", "model.mlp='relu'; choose swiglu or gelu"),
    ("model.positions=alibi", "model.positions='alibi'; choose rope or learned"),
])
def test_validation_errors(override, message):
  c = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(c, [override])
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(c)


def test_backend_defaults():
  c = config_lib.load_experiment("token_ntp:tiny")
  cpu = config_lib.resolve_backend_defaults(c, "cpu").model
  gpu = config_lib.resolve_backend_defaults(c, "gpu").model
  assert (cpu.dtype, cpu.scan_unroll, cpu.attention_impl) == ("float32", c.model.num_layers, "xla")
  assert (gpu.dtype, gpu.scan_unroll) == ("bfloat16", 1)
  assert c.model.dtype == "auto"  # the input is not modified


def test_json_round_trip():
  c = config_lib.load_experiment("token_ntp:tiny")
  assert config_lib.from_json(config_lib.to_json(c)).to_dict() == c.to_dict()


def test_list_experiments_has_docstring_first_lines():
  listed = config_lib.list_experiments()
  assert listed["token_ntp"].startswith("Next-token prediction")
