"""Sequence-level post-training: reward functions (`rewards.py`); the `lm rl` loop builds on
`lm.decoding.rollout` (sampling with log-probabilities) and `lm.objectives.sequence` (the policy-gradient loss)."""
