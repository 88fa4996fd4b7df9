"""User-facing errors: one line naming the problem and the fix, raised before any compile."""


class LMError(Exception):
  """Base class; the CLI prints `error: <message>` and exits 2 instead of a traceback."""


class ConfigError(LMError):
  """A config key, value or experiment name is wrong."""


class DataError(LMError):
  """A data source, corpus or tokenizer is unusable."""


class CheckpointError(LMError):
  """A workdir or checkpoint cannot be used."""
