"""Data and checks shared by the estimator tests (tests/test_estimators*).

Fits are small (a few epochs on a few hundred examples) and measure the
alignment only where it is the subject: elsewhere `alignment_every=0`,
since on jax a measurement compiles its own function for every new model.
"""

import functools

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.datasets import make_classification


@functools.lru_cache(maxsize=None)
def digits_cached():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def digits(n=300, start=0):
    """`n` digits (64 features in [0, 1], 10 classes) from `start`."""
    X, y = digits_cached()
    return X[start : start + n].copy(), y[start : start + n].copy()


def three_classes(n=120, seed=0):
    """An easy 3-class problem with 8 features."""
    return make_classification(
        n_samples=n,
        n_features=8,
        n_informative=5,
        n_classes=3,
        class_sep=2.0,
        random_state=seed,
    )


def fast(**params):
    """Parameters of a small, quick fit, updated by `params`."""
    base = {
        "hidden_layer_sizes": (8,),
        "max_iter": 3,
        "alignment_every": 0,
        "random_state": 0,
    }
    base.update(params)
    return base


def learns(**params):
    """Parameters of a short fit that learns digits under fa: FA needs
    more steps than backprop (its hidden updates point elsewhere at first),
    hence minibatches of 32 and ten times the default learning rate."""
    return fast(
        hidden_layer_sizes=(32,),
        max_iter=10,
        batch_size=32,
        learning_rate_init=0.01,
        **params,
    )


def numpy_values(variables):
    """The values of `variables`, as numpy arrays."""
    return [keras.ops.convert_to_numpy(v.value) for v in variables]


def assert_same_state(a, b):
    """Every model and optimizer variable of `a` equals `b`'s, bit for bit."""
    pairs = [
        (a.model_.variables, b.model_.variables),
        (a.model_.optimizer.variables, b.model_.optimizer.variables),
    ]
    for va, vb in pairs:
        assert len(va) == len(vb) > 0
        for x, y, variable in zip(numpy_values(va), numpy_values(vb), va):
            np.testing.assert_array_equal(x, y, err_msg=variable.path)


def differs(a, b):
    """Whether any model variable of `a` differs from `b`'s."""
    return any(
        not np.array_equal(x, y)
        for x, y in zip(
            numpy_values(a.model_.variables), numpy_values(b.model_.variables)
        )
    )
