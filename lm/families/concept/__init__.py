"""The concept family: `family.py` (its `Family`, model and data), and what only it uses beside. Copy this folder under
another name to fork it (`model.family=NEWNAME`); nothing else needs an edit."""

from .family import FAMILY  # noqa: F401
