import os
import tempfile

# One corpus/tokenizer cache per test session, inherited by CLI subprocesses; never the user's own cache.
os.environ.setdefault("LM_CACHE_DIR", tempfile.mkdtemp(prefix="lm-test-cache-"))

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
