"""Shared test set-up: a private Keras home, and the active backend's name.

The suite runs once per backend: `KERAS_BACKEND=jax pytest tests` (the script
`tests/run_all_backends.py` runs all three).
"""

import itertools
import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="keras_fa_test_home_")
os.environ.setdefault("KERAS_HOME", os.path.join(_HOME, "keras"))
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_HOME, "matplotlib"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()

if BACKEND == "torch":
    import torch

    # The test models are small: on a 2-core machine shared with other jobs,
    # torch's intra-op threads cost more than they give (a fit of 1500 tiny
    # steps took 35 s with the default threads and 7 s with one).
    torch.set_num_threads(1)


# A full garbage collection (what `clear_session()` adds by default) takes
# 0.3-0.5 s once tensorflow, jax or torch is loaded: over the suite's ~1,600
# tests, 4-5 minutes per backend. Python's own collector still runs; a full
# collection every 25 tests keeps memory flat.
_COLLECT_EVERY = 25
_tests = itertools.count()


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts with a clean Keras session and a fixed seed."""
    keras.backend.clear_session(free_memory=next(_tests) % _COLLECT_EVERY == 0)
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")
