"""Objectives are pure functions returning sums and counts; `build(config.objectives)` composes them."""

from lm.objectives.base import LossContext, LossTerms, build, register, registered, schedule, summarize  # noqa: F401
