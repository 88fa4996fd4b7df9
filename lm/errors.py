"""User-facing errors: one line naming the problem and the fix, raised before any compile."""

import difflib
import os
import sys
import tempfile
import traceback


class LMError(Exception):
  """Base class; the CLI prints `error: <message>` and exits 2 instead of a traceback."""


class ConfigError(LMError):
  """A config key, value or experiment name is wrong."""


class DataError(LMError):
  """A data source, corpus or tokenizer is unusable."""


class CheckpointError(LMError):
  """A workdir or checkpoint cannot be used."""


class RunFinished(CheckpointError):
  """`lm train` on a workdir whose run already reached `train.steps`: nothing to train."""


# ---------------------------------------------------------------------------------------------------------
# Wording helpers, so every message reads as English.

def plural(n: int, word: str, many: str | None = None) -> str:
  """`1 document`, `2 documents` (`many` for irregular plurals)."""
  return f"{n} {word if n == 1 else many or word + 's'}"


def type_name(value_or_type) -> str:
  """What a value of this type is called in a message: `an integer`, `a number`, `a string`, `a list`."""
  t = value_or_type if isinstance(value_or_type, type) else type(value_or_type)
  names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
           tuple: "a list", dict: "a dict", type(None): "nothing (None)"}
  return names.get(t, f"a {t.__name__}" if t.__name__[:1].lower() not in "aeiou" else f"an {t.__name__}")


def did_you_mean(name: str, choices, prefix: str = "", cutoff: float = 0.6) -> str:
  """`did you mean 'X'? ` when one of `choices` is close to `name` (difflib's default cutoff), else ``."""
  near = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
  return f"did you mean {prefix}{near[0]}? " if near and prefix else f"did you mean {near[0]!r}? " if near else ""


def process_log() -> str:
  """This process's log of details kept off the terminal (library logs, tracebacks): TMP/lm-PID.log."""
  return os.path.join(tempfile.gettempdir(), f"lm-{os.getpid()}.log")


def unraisable_to(path) -> None:
  """Append unraisable exceptions (tensorstore's callbacks into a closed event loop, orbax's abandoned
  coroutines: dozens of lines each on the terminal) to the file `path` instead."""
  def to_file(u):
    try:
      with open(path, "a", encoding="utf-8") as f:
        f.write(f"--- unraisable exception in {u.object!r}\n" + "".join(traceback.format_exception(
            u.exc_type, u.exc_value, u.exc_traceback)))
    except OSError:
      pass
  sys.unraisablehook = to_file
