"""Test helpers of keras_fa.datasets: batch checks, refusal checks, and the
TFDS mock (`tfds_mock`, `prepared_tfds`) as fixtures to import.

What `tfds.testing.mock_data` covers: `tfds.builder` builds the real builder
(features, number of classes, image shape, download URLs), and
`builder.as_dataset` takes the arguments `load` passes (split, supervised
tuples, read config, a decoder that skips images) and yields random
examples of the real features, so label filtering, renumbering, EMNIST
transposition, scaling, caching, shuffling and batching all run on them.
What it cannot cover: reading prepared files (the mock does not read
disk), split sizes and class names from a prepared `dataset_info.json`
(the counts here come from iterating labels), and a real download
(`download_and_prepare` is a no-op); the `prepared_mnist` fixture of
conftest.py covers reading a real prepared directory. Train and test
splits yield the same examples. Under the mock, the builder looks in a
metadata folder this TFDS release does not ship, so `is_prepared()` is
False; `prepared_tfds` makes it True so that `load` takes the path
prepared data takes.
"""

import numpy as np
import pytest

from keras_fa.datasets import download

# Examples per split of the mock.
NUM_MOCK = 50


def check_batches(dataset, batch_size, total, input_shape, low, high):
    """Asserts `dataset` yields float32 `x` in `[low, high]` and int32 `y`,
    `total` examples in full batches but the last."""
    sizes = []
    for x, y in dataset:
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape[1:] == input_shape and y.shape == x.shape[:1]
        assert x.min() >= low and x.max() <= high
        sizes.append(len(y))
    # Every batch full but the last, which is kept.
    assert sum(sizes) == total
    assert all(size == batch_size for size in sizes[:-1])
    assert 0 < sizes[-1] <= batch_size


def labels(dataset):
    """All the labels of a batched dataset, in order."""
    return np.concatenate([np.asarray(y) for _, y in dataset])


def images(dataset):
    """All the inputs of a batched dataset, in order."""
    return np.concatenate([np.asarray(x) for x, _ in dataset])


def refuses(call, *words):
    """Asserts `call()` raises a ValueError whose message holds `words`."""
    with pytest.raises(ValueError) as caught:
        call()
    message = str(caught.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


def forbid(monkeypatch, owner, name):
    """Makes `owner.name` fail the test if it is called."""

    def work(*args, **kwargs):
        raise AssertionError(f"{name} ran before the bad argument was refused")

    monkeypatch.setattr(owner, name, work)


def forbid_network_check(monkeypatch, why):
    """Makes the network check fail the test, saying `why`."""

    def no_network_check(*args):
        raise AssertionError(why)

    monkeypatch.setattr(download, "network_available", no_network_check)


@pytest.fixture
def tfds_mock():
    """TFDS with `mock_data`: random examples of the real features."""
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=NUM_MOCK):
        yield tfds


@pytest.fixture
def prepared_tfds(monkeypatch, tfds_mock):
    """The mock, with every builder prepared: no download, no network."""
    monkeypatch.setattr(
        tfds_mock.core.DatasetBuilder, "is_prepared", lambda self: True
    )
    forbid_network_check(monkeypatch, "prepared data needs no network check")
    return tfds_mock
