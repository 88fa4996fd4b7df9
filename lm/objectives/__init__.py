"""Objectives are pure functions returning sums and counts; `build(config.objectives)` composes them, and one
`register(name, head=..., reference=..., decoder_passes=...)` call is everything an objective needs."""

from lm.objectives.base import (Head, LossContext, LossTerms, Objective, Requirements, build, get,  # noqa: F401
                                TrunkOutputs, masked_nll, register, registered, requirements, schedule, summarize,
                                token_nll)

