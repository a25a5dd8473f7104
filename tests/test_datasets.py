"""Tests of keras_fa.datasets: shapes, dtypes, labels, determinism."""

import os
import random

import numpy as np
import pytest

from keras_fa import datasets


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


def test_load_digits_deterministic_for_a_seed():
    first = datasets.load_digits(seed=3)
    _assert_same(first, datasets.load_digits(seed=3))
    other = datasets.load_digits(seed=4)
    assert not np.array_equal(first[0][0], other[0][0])


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


def test_load_mnist1d_deterministic_for_a_seed():
    first = datasets.load_mnist1d(seed=1)
    _assert_same(first, datasets.load_mnist1d(seed=1))
    other = datasets.load_mnist1d(seed=2)
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
