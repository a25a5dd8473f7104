"""Tests of keras_fa.datasets.offline: the arrays of digits, MNIST-1D and
the standard-library text (shapes, dtypes, labels, determinism, bad
arguments refused before any work), and their `Task`."""

import functools
import os
import random

import numpy as np
import pytest

from keras_fa import datasets
from keras_fa.datasets import offline
from tests._datasets import check_batches
from tests._datasets import forbid
from tests._datasets import images
from tests._datasets import labels
from tests._datasets import refuses


def _check_split(split, n_train, n_test, n_features):
    (x_train, y_train), (x_test, y_test) = split
    assert x_train.shape == (n_train, n_features)
    assert x_test.shape == (n_test, n_features)
    assert y_train.shape == (n_train,)
    assert y_test.shape == (n_test,)
    for x in (x_train, x_test):
        assert x.dtype == np.float32
        assert np.all(np.isfinite(x))
    for y in (y_train, y_test):
        assert np.issubdtype(y.dtype, np.integer)
        assert y.min() == 0 and y.max() == 9
        assert len(np.unique(y)) == 10


def _assert_same(a, b):
    for part_a, part_b in zip(a, b):
        for array_a, array_b in zip(part_a, part_b):
            np.testing.assert_array_equal(array_a, array_b)


def test_load_digits_shapes_and_range():
    split = datasets.load_digits()
    _check_split(split, 1347, 450, 64)
    (x_train, _), (x_test, _) = split
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0
    assert x_train.max() == 1.0
    assert x_test.min() >= 0.0 and x_test.max() <= 1.0


def test_load_digits_is_stratified():
    (_, y_train), (_, y_test) = datasets.load_digits(test_fraction=0.5)
    train_share = np.bincount(y_train) / len(y_train)
    test_share = np.bincount(y_test) / len(y_test)
    np.testing.assert_allclose(train_share, test_share, atol=0.01)


def test_load_digits_test_fraction():
    (x_train, _), (x_test, _) = datasets.load_digits(test_fraction=0.1)
    assert len(x_train) + len(x_test) == 1797
    assert len(x_test) == 180


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 2])
def test_load_digits_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        datasets.load_digits(test_fraction=fraction)


def test_load_mnist1d_shapes():
    _check_split(datasets.load_mnist1d(), 4000, 1000, 40)


@pytest.mark.parametrize("loader", ["load_digits", "load_mnist1d"])
def test_loaders_are_deterministic_for_a_seed(loader):
    load = getattr(datasets, loader)
    first = load(seed=3)
    _assert_same(first, load(seed=3))
    other = load(seed=4)
    assert not np.array_equal(first[0][0], other[0][0])


def test_load_mnist1d_default_is_the_standard_seed():
    _assert_same(
        datasets.load_mnist1d(),
        datasets.load_mnist1d(seed=datasets.MNIST1D_STANDARD_SEED),
    )


def test_load_mnist1d_returns_copies():
    (x_train, _), _ = datasets.load_mnist1d(seed=1)
    x_train[:] = 0.0
    (x_again, _), _ = datasets.load_mnist1d(seed=1)
    assert np.any(x_again != 0.0)


def test_load_mnist1d_keeps_global_random_state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    datasets.load_mnist1d(seed=11)
    assert (random.random(), np.random.rand()) == expected
    # Nothing downloaded or cached in the working directory.
    assert os.listdir(tmp_path) == []


def test_load_mnist1d_rejects_non_integer_seed():
    with pytest.raises(ValueError, match="seed"):
        datasets.load_mnist1d(seed=1.5)


@pytest.mark.parametrize("name, loader", [("digits", 0), ("mnist1d", 1)])
def test_load_offline_task_matches_loader(name, loader):
    task = datasets.load(name)
    expected = (datasets.load_digits, datasets.load_mnist1d)[loader]()
    features = 64 if name == "digits" else 40
    assert task.name == name and task.input_shape == (features,)
    assert task.num_classes == 10 and task.classes == tuple(range(10))
    for split, (x, y) in zip(("train", "test"), expected):
        x_task, y_task = task.arrays(split)
        np.testing.assert_array_equal(x_task, x)
        np.testing.assert_array_equal(y_task, y)
        assert y_task.dtype == np.int32
    assert (task.num_train, task.num_test) == (
        len(expected[0][1]),
        len(expected[1][1]),
    )
    low, high = (0.0, 1.0) if name == "digits" else (-np.inf, np.inf)
    check_batches(task.train(128), 128, task.num_train, (features,), low, high)
    check_batches(task.test(100), 100, task.num_test, (features,), low, high)
    # Unshuffled training and test sets come in the loader's order.
    np.testing.assert_array_equal(
        images(task.train(500, shuffle=False)), expected[0][0]
    )
    np.testing.assert_array_equal(labels(task.test(64)), expected[1][1])


def test_load_offline_class_subset():
    (_, y_train), (x_test, y_test) = datasets.load_digits()
    task = datasets.load("digits", classes=3, seed=5)
    again = datasets.load("digits", classes=3, seed=5)
    expected_classes = tuple(
        sorted(np.random.default_rng(5).choice(10, 3, replace=False))
    )
    assert task.classes == again.classes == expected_classes
    assert task.num_classes == 3
    assert task.class_names == tuple(str(c) for c in task.classes)
    assert task.num_train == np.isin(y_train, task.classes).sum()
    mask = np.isin(y_test, task.classes)
    x, y = task.arrays("test")
    np.testing.assert_array_equal(x, x_test[mask])
    np.testing.assert_array_equal(np.asarray(task.classes)[y], y_test[mask])
    kept = labels(task.train(64))
    assert len(kept) == task.num_train
    assert set(kept) == {0, 1, 2}

    # A sequence keeps its order: label i is classes[i].
    task = datasets.load("mnist1d", classes=[7, 2])
    (_, y_train), _ = datasets.load_mnist1d()
    _, y = task.arrays("train")
    kept = y_train[np.isin(y_train, [7, 2])]
    np.testing.assert_array_equal(y, np.where(kept == 7, 0, 1))
    assert task.classes == (7, 2) and task.num_train == len(kept)


# Each case is a loop iteration, not a parameter: conftest's fresh Keras
# session costs more than the case.

DIGITS_BAD_ARGUMENTS = [
    ({"test_fraction": "a"}, ["test_fraction", "'a'", "number", "0 and 1"]),
    ({"test_fraction": None}, ["test_fraction", "None", "number"]),
    ({"test_fraction": float("nan")}, ["test_fraction", "nan"]),
    ({"test_fraction": True}, ["test_fraction", "True"]),
    # The stratified split needs one example per class in each part.
    ({"test_fraction": 0.005}, ["test_fraction", "0.005", "9/1797"]),
    ({"test_fraction": 0.995}, ["test_fraction", "0.995", "1787/1797"]),
    ({"seed": -1}, ["seed", "-1", "integer in [0, 2**32)"]),
    ({"seed": 2**32}, ["seed", "4294967296", "[0, 2**32)"]),
    ({"seed": "x"}, ["seed", "'x'", "integer"]),
    ({"seed": 1.5}, ["seed", "1.5", "integer"]),
]


def test_load_digits_refuses_bad_arguments_before_loading(monkeypatch):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    forbid(monkeypatch, sklearn_datasets, "load_digits")
    for kwargs, words in DIGITS_BAD_ARGUMENTS:
        refuses(functools.partial(datasets.load_digits, **kwargs), *words)


def test_load_digits_takes_numpy_numbers_and_the_extreme_fractions():
    expected = datasets.load_digits(test_fraction=0.25, seed=3)
    # scikit-learn refuses a np.float32 test_size: it is passed as a float.
    _assert_same(
        datasets.load_digits(test_fraction=np.float32(0.25), seed=np.int64(3)),
        expected,
    )
    # The smallest and largest parts the split allows: one per class.
    for fraction, n_test in ((0.0051, 10), (1787 / 1797, 1787)):
        (_, y_train), (_, y_test) = datasets.load_digits(fraction)
        assert len(y_test) == n_test and len(y_train) == 1797 - n_test
        assert len(np.unique(y_train)) == len(np.unique(y_test)) == 10


STDLIB_TEXT_BAD_ARGUMENTS = [
    ({"test_fraction": "a"}, ["test_fraction", "'a'", "number", "0 and 1"]),
    ({"test_fraction": 1}, ["test_fraction", "1", "0 and 1"]),
    ({"sequence_length": 8.0}, ["sequence_length", "8.0", "integer"]),
    ({"sequence_length": "8"}, ["sequence_length", "'8'", ">= 2"]),
]


def test_load_stdlib_text_refuses_bad_arguments_before_reading(monkeypatch):
    forbid(monkeypatch, offline, "stdlib_text")
    for kwargs, words in STDLIB_TEXT_BAD_ARGUMENTS:
        refuses(functools.partial(datasets.load_stdlib_text, **kwargs), *words)


def test_load_stdlib_text_refuses_what_leaves_a_part_empty():
    size = len(datasets.stdlib_text())
    longest = size // 2 - 1
    # Two windows: one to train on, one to test on.
    (x, _), (x_test, _) = datasets.load_stdlib_text(longest)
    assert x.shape == x_test.shape == (1, longest)
    refuses(
        lambda: datasets.load_stdlib_text(longest + 1),
        "sequence_length",
        str(longest + 1),
        f"from 2 to {longest}",
    )
    refuses(
        lambda: datasets.load_stdlib_text(10**9),
        "sequence_length",
        "1000000000",
    )
    # 0.9999 of the windows rounds to all of them: none left to train on.
    refuses(
        lambda: datasets.load_stdlib_text(32, test_fraction=0.9999),
        "test_fraction",
        "0.9999",
        "for training",
    )
    # A NumPy integer is an integer.
    (x, _), _ = datasets.load_stdlib_text(np.int64(16))
    assert x.shape[1] == 16


def test_load_mnist1d_refuses_bad_seed_before_generating(monkeypatch):
    forbid(monkeypatch, offline, "_make_mnist1d")
    for seed in (-1, 2**32, "x", True):
        refuses(
            functools.partial(datasets.load_mnist1d, seed=seed),
            "seed",
            repr(seed),
        )
