"""Tests of the keras_fa.datasets package: its public names, and that
importing it imports no tensorflow. Its modules have their own tests:
tests/test_datasets_<module>.py."""

import subprocess
import sys

import keras
import pytest

import keras_fa
from keras_fa import datasets


def test_public_names():
    # TFDS_DATASETS: see tests/test_datasets_tfds.py.
    assert datasets.OFFLINE_DATASETS == ("digits", "mnist1d")
    assert datasets.MNIST1D_STANDARD_SEED == 42
    assert datasets.STDLIB_TEXT_VOCABULARY == 96
    assert datasets.NETWORK_TIMEOUT_SECONDS == 3.0
    assert issubclass(datasets.DatasetUnavailableError, RuntimeError)
    assert keras_fa.datasets is datasets
    for name in datasets.__all__:
        value = getattr(datasets, name)
        assert not callable(value) or value.__doc__, f"{name}: no docstring"


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="the tensorflow backend imports tensorflow anyway",
)
def test_import_does_not_load_tensorflow():
    code = (
        "import sys, keras_fa, keras_fa.datasets; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
