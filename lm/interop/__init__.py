"""Interop with other ecosystems: Hugging Face model directories (`lm import hf`, `lm export hf`, `init_from`)."""
