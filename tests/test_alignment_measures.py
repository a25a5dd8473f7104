"""Tests of keras_fa/alignment/measures.py: the angle, in numpy and in
keras.ops, and the sums the measures are computed from."""

import math

import keras
import numpy as np
import pytest

from keras_fa import alignment
from keras_fa.alignment import measures


def _float(tensor):
    return float(keras.ops.convert_to_numpy(tensor))


def test_angle_known_values():
    assert alignment.angle([1, 0], [0, 3]) == pytest.approx(90)
    assert alignment.angle([1, 0], [2, 0]) == pytest.approx(0, abs=1e-12)
    assert alignment.angle([1, 0], [-1, 0]) == pytest.approx(180)
    assert alignment.angle([1, 0], [1, 1]) == pytest.approx(45)
    assert alignment.angle(np.ones((2, 3)), np.ones(6)) == pytest.approx(0)
    # Accurate where arccos of the cosine is not: 1e-6 rad apart.
    tiny = alignment.angle([1, 0], [1, 1e-6])
    assert tiny == pytest.approx(math.degrees(1e-6), rel=1e-6)
    assert math.isnan(alignment.angle([0, 0], [1, 0]))
    with pytest.raises(ValueError, match="same size"):
        alignment.angle([1, 2], [1, 2, 3])


def test_tensor_angle_equals_angle():
    rng = np.random.default_rng(0)
    for a, b in (
        (rng.normal(size=(3, 4)), rng.normal(size=(3, 4))),
        (np.array([1.0, 0.0]), np.array([0.0, 2.0])),
        (np.array([1.0, 2.0]), np.array([2.0, 4.0])),
    ):
        got = _float(measures.tensor_angle(a, b))
        assert got == pytest.approx(alignment.angle(a, b), abs=1e-3)


def test_weight_measures_from_three_sums():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, 3)).astype("float32")
    b = rng.normal(size=(5, 3)).astype("float32")
    angle, ratio = measures.weight_measures(w, b, exact=False)
    assert _float(angle) == pytest.approx(alignment.angle(w, b), abs=1e-3)
    assert _float(ratio) == pytest.approx(
        np.linalg.norm(b) / np.linalg.norm(w), rel=1e-5
    )
    # An exact rule's B is W: 0 degrees, ratio 1, with no sums.
    angle, ratio = measures.weight_measures(w, b, exact=True)
    assert (_float(angle), _float(ratio)) == (0.0, 1.0)
    # A zero kernel has no angle.
    zero = np.zeros_like(w)
    assert math.isnan(_float(measures.weight_measures(zero, b, False)[0]))


def test_conservation_measures_and_their_order():
    q = {"a": np.array([1.0, 2.0]), "b": np.array([3.0])}
    assert measures.conservation_measures(q, None) == {
        "a/conservation": 3.0,
        "b/conservation": 3.0,
    }
    reference = {"a": np.array([0.5, 3.0])}
    values = measures.conservation_measures(q, reference)
    assert values["a/conservation_drift"] == pytest.approx(-0.5)
    assert values["a/conservation_drift_max"] == pytest.approx(1.0)
    assert "b/conservation_drift" not in values
    # By kernel in the model's order, then by measure in MEASURES' order.
    values = {**values, "b/update_angle": 1.0, "a/weight_angle": 2.0}
    assert list(measures.ordered(values, ["b", "a"])) == [
        "b/update_angle",
        "b/conservation",
        "a/weight_angle",
        "a/conservation",
        "a/conservation_drift",
        "a/conservation_drift_max",
    ]
    assert alignment.MEASURES == measures.MEASURES
    assert set(alignment.ANGLE_MEASURES) < set(alignment.MEASURES)
