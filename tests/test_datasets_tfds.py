"""Tests of keras_fa.datasets.tfds: the TFDS sets as tasks, on TFDS's mock
data (see tests/_datasets.py for what it covers) and on a real prepared
directory (conftest's `prepared_mnist`)."""

import numpy as np
import pytest

from keras_fa import datasets
from tests._datasets import NUM_MOCK
from tests._datasets import check_batches
from tests._datasets import forbid_network_check
from tests._datasets import images
from tests._datasets import labels
from tests._datasets import prepared_tfds  # noqa: F401 (a fixture)
from tests._datasets import tfds_mock  # noqa: F401 (a fixture)

TFDS_SHAPES = {
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "kmnist": ((28, 28, 1), 10),
    "emnist/balanced": ((28, 28, 1), 47),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
}


def test_load_tfds_tasks(prepared_tfds):  # noqa: F811
    assert set(datasets.TFDS_DATASETS) == set(TFDS_SHAPES)
    for name, (shape, num_classes) in TFDS_SHAPES.items():
        task = datasets.load(name)
        assert task.name == name and task.input_shape == shape, name
        assert task.num_classes == num_classes, name
        assert task.classes == tuple(range(num_classes))
        assert len(task.class_names) == num_classes
        assert task.num_train == task.num_test == NUM_MOCK
        check_batches(task.train(16), 16, NUM_MOCK, shape, 0.0, 1.0)
        check_batches(task.test(16), 16, NUM_MOCK, shape, 0.0, 1.0)
        x, y = task.arrays("test")
        assert x.shape == (NUM_MOCK, *shape) and x.dtype == np.float32
        assert y.shape == (NUM_MOCK,) and y.dtype == np.int32
        # Scaled from uint8: multiples of 1/255, not all small.
        np.testing.assert_allclose(x * 255, np.rint(x * 255), atol=1e-3)
        assert x.max() > 0.9
    with pytest.raises(ValueError, match="between 2 and 47"):
        datasets.load("emnist/balanced", classes=48)
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        datasets.load("cifar100", classes=[5, 100])


@pytest.mark.parametrize("name", ["mnist", "cifar100"])
def test_load_tfds_class_subset(prepared_tfds, name):  # noqa: F811
    full = datasets.load(name)
    x_all, y_all = full.arrays("test")
    present = np.unique(y_all)
    chosen = [int(present[-1]), int(present[0]), int(present[2])]
    task = datasets.load(name, classes=chosen)
    assert task.classes == tuple(chosen) and task.num_classes == 3
    mask = np.isin(y_all, chosen)
    x, y = task.arrays("test")
    assert np.all(y < 3)
    np.testing.assert_array_equal(x, x_all[mask])
    np.testing.assert_array_equal(np.asarray(chosen)[y], y_all[mask])
    # The mock's train split holds the same examples as its test split.
    assert task.num_train == task.num_test == mask.sum()
    assert set(labels(task.train(8))) == {0, 1, 2}

    drawn = datasets.load(name, classes=4, seed=1)
    expected = np.sort(
        np.random.default_rng(1).choice(full.num_classes, 4, replace=False)
    )
    assert drawn.classes == tuple(expected)
    assert drawn.num_train == np.isin(y_all, expected).sum()
    assert np.all(labels(drawn.test(8)) < 4)


def test_load_emnist_transposes_images(prepared_tfds):  # noqa: F811
    raw = prepared_tfds.builder("emnist/balanced").as_dataset(
        split="test", as_supervised=True
    )
    raw_images = np.stack([np.asarray(x) for x, _ in raw])
    x, _ = datasets.load("emnist/balanced").arrays("test")
    pixels = np.rint(x * 255).astype("uint8")
    np.testing.assert_array_equal(pixels, raw_images.transpose(0, 2, 1, 3))
    assert not np.array_equal(pixels, raw_images)


def test_tfds_training_order_is_seeded_and_reshuffled(
    prepared_tfds,  # noqa: F811
):
    task = datasets.load("mnist")
    first = images(task.train(16, seed=3))
    np.testing.assert_array_equal(first, images(task.train(16, seed=3)))
    other = images(task.train(16, seed=4))
    assert not np.array_equal(first, other)
    # The same examples, in another order.
    np.testing.assert_array_equal(np.sort(first, 0), np.sort(other, 0))
    # Each pass over one dataset (each epoch) draws a new order.
    dataset = task.train(16, seed=3)
    epoch_1, epoch_2 = images(dataset), images(dataset)
    np.testing.assert_array_equal(epoch_1, first)
    assert not np.array_equal(epoch_1, epoch_2)
    np.testing.assert_array_equal(
        images(task.train(16, shuffle=False)), task.arrays("train")[0]
    )
    repeated = list(task.train(16, repeat=True).take(7))
    assert sum(len(y) for _, y in repeated) == 7 * 16 > NUM_MOCK


def _rows(images):
    # Examples as sortable bytes: TFDS stores them in its own order.
    return sorted(image.tobytes() for image in images)


def test_load_prepared_tfds_data(prepared_mnist, monkeypatch):
    root, examples = prepared_mnist
    forbid_network_check(monkeypatch, "prepared data needs no network check")
    for download in (False, None):
        task = datasets.load("mnist", data_dir=root, download=download)
        assert (task.num_train, task.num_test) == (60, 30)
    x, y = task.arrays("test")
    test_images, test_labels = examples["test"]
    assert x.shape == (30, 28, 28, 1) and x.dtype == np.float32
    pixels = np.rint(x[..., 0] * 255).astype("uint8")
    assert _rows(pixels) == _rows(test_images)
    np.testing.assert_array_equal(np.sort(y), np.sort(test_labels))
    check_batches(task.train(16), 16, 60, (28, 28, 1), 0.0, 1.0)

    subset = datasets.load("mnist", data_dir=root, classes=[3, 1])
    _, train_labels = examples["train"]
    assert subset.num_train == np.isin(train_labels, [3, 1]).sum()
    assert subset.num_test == np.isin(test_labels, [3, 1]).sum()
    x, y = subset.arrays("test")
    kept = np.isin(test_labels, [3, 1])
    pixels = np.rint(x[..., 0] * 255).astype("uint8")
    assert _rows(pixels) == _rows(test_images[kept])
    # Each kept image carries its class's new label: 3 -> 0, 1 -> 1.
    new_label = {
        image.tobytes(): int(label == 1)
        for image, label in zip(test_images[kept], test_labels[kept])
    }
    assert [new_label[p.tobytes()] for p in pixels] == list(y)
    assert len(labels(subset.train(4))) == subset.num_train
