"""Objectives are pure functions returning sums and counts; `build(config.objectives)` composes them, and one
`register(name, head=..., reference=..., decoder_passes=...)` call is everything an objective needs."""

from lm.objectives.base import (Head, LossContext, LossTerms, Objective, Requirements, build, get,  # noqa: F401
                                masked_nll, register, registered, requirements, schedule, summarize, token_nll)

# The built-in objectives, registered on import (importing any lm.objectives module runs this file first).
from lm.objectives import concept, sequence, token  # noqa: E402,F401  pylint: disable=wrong-import-position
