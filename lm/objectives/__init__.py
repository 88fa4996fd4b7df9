"""Objectives are pure functions returning sums and counts; `build(config.objectives)` composes them."""

from lm.objectives.base import (LossContext, LossTerms, build, heads, register, registered, schedule,  # noqa: F401
                                summarize)
