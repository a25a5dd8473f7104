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


@pytest.fixture(scope="session")
def prepared_mnist(tmp_path_factory):
    """A real TFDS data directory holding a tiny "mnist", and its examples:
    `(directory, {split: (uint8 images, labels)})`, 60 train, 30 test.

    TFDS's own MNIST builder prepares it from MNIST-format files written
    here (the download is replaced by their paths): the tfrecord files and
    `dataset_info.json` are the real thing, which `mock_data` cannot give.
    """
    import numpy as np

    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.image_classification import mnist

    raw = tmp_path_factory.mktemp("mnist_files")
    rng = np.random.default_rng(0)
    files, examples = {}, {}
    for split, count in (("train", 60), ("test", 30)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.permutation(np.arange(count) % 10).astype(np.uint8)
        files[f"{split}_data"] = raw / f"{split}_data"
        files[f"{split}_labels"] = raw / f"{split}_labels"
        # The idx headers (16 and 8 bytes) are skipped by the reader.
        files[f"{split}_data"].write_bytes(bytes(16) + images.tobytes())
        files[f"{split}_labels"].write_bytes(bytes(8) + labels.tobytes())
        examples[split] = (images, labels)
    root = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mnist, "_TRAIN_EXAMPLES", 60)
        patch.setattr(mnist, "_TEST_EXAMPLES", 30)
        patch.setattr(
            tfds.download.DownloadManager,
            "download_and_extract",
            lambda self, urls: {key: str(files[key]) for key in urls},
        )
        tfds.builder("mnist", data_dir=str(root)).download_and_prepare()
    return str(root), examples
