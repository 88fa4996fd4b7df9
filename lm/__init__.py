"""lm: a JAX framework for the question of what a language model should predict.

`lm.load(workdir)` and `lm.build(experiment, **overrides)` are the Python API (`lm/api.py`); `lm ...` on the
command line is a thin layer over it.
"""

__version__ = "0.1.0"


def __getattr__(name):  # `import lm` stays light; jax loads on first use of the API
  if name in ("load", "build", "LM"):
    from lm import api
    return getattr(api, name)
  raise AttributeError(f"module 'lm' has no attribute {name!r}")
