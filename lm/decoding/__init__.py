"""Sequence-level decoding: beam and diverse beam search, power sampling (MH and SMC), regex-constrained SMC,
minimum Bayes risk, and exact byte-level probabilities of token models.

Modules: `exact` (every sequence of a tiny vocabulary and length, the oracle the tests check against),
`search` (beam, diverse beam, MBR), `smc` (particles, power sampling, constrained generation), `regex` (a regex
compiled to a DFA over bytes and lifted to a tokenizer's units), `bytes` (cover sets: prefix probabilities and
next-byte distributions of a token model).
"""
