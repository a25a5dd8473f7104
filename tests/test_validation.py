"""`keras_fa._validation`: the argument checks shared across keras_fa.

Each check returns an accepted value as a plain Python number (numpy scalars
too), refuses bools as numbers, and raises for a refused value a ValueError
(a TypeError for data of the wrong kind) whose message names the argument,
what is allowed and what was received.
"""

import keras
import numpy as np
import pytest

from keras_fa import _validation as v

# -- numbers and flags --------------------------------------------------------

# (check, kwargs, accepted values with what they return)
ACCEPTED = [
    (v.check_integer, {}, [(3, 3), (-2, -2), (np.int64(5), 5), (0, 0)]),
    (v.check_integer, {"minimum": 1}, [(1, 1), (np.int32(9), 9)]),
    (v.check_real, {}, [(0.5, 0.5), (-3, -3.0), (np.float32(0.25), 0.25)]),
    (v.check_real, {"minimum": 0, "exclusive": True}, [(1e-9, 1e-9)]),
    (v.check_real, {"minimum": 0}, [(0, 0.0), (2.5, 2.5)]),
    (v.check_real, {"minimum": 0, "maximum": 1}, [(0.0, 0.0), (0.99, 0.99)]),
    (v.check_real, {"maximum": 1}, [(-5.0, -5.0)]),
    (v.check_bool, {}, [(True, True), (False, False), (np.bool_(1), True)]),
    (v.check_positive_integer, {}, [(1, 1), (np.int64(64), 64)]),
    (v.check_seed, {}, [(0, 0), (2**32 - 1, 2**32 - 1), (np.uint32(7), 7)]),
    (v.check_fraction, {}, [(0.25, 0.25), (np.float64(0.9), 0.9)]),
]

# (check, kwargs, refused values, what the message says is allowed)
REFUSED = [
    (v.check_integer, {}, [1.0, "3", True, None], "an integer"),
    (v.check_integer, {"minimum": 1}, [0, -4, np.int64(0)], "an integer >= 1"),
    (v.check_real, {}, [True, "1", None, float("nan")], "a finite number"),
    (
        v.check_real,
        {},
        [float("inf"), -float("inf"), [1.0]],
        "a finite number",
    ),
    (
        v.check_real,
        {"minimum": 0, "exclusive": True},
        [0, -1.0],
        "a finite positive number",
    ),
    (v.check_real, {"minimum": 0}, [-0.1], "a finite number >= 0"),
    (
        v.check_real,
        {"minimum": 1, "exclusive": True},
        [1],
        "a finite number > 1",
    ),
    (v.check_real, {"maximum": 1}, [1, 2.0], "a finite number < 1"),
    (v.check_real, {"minimum": 0, "maximum": 1}, [1.0, -0.5], "in [0, 1)"),
    (
        v.check_real,
        {"minimum": 0, "exclusive": True, "maximum": 1},
        [0.0],
        "in (0, 1)",
    ),
    (v.check_bool, {}, [1, 0, "no", "True", None], "True or False"),
    (
        v.check_positive_integer,
        {},
        [0, -1, 2.0, True],
        "a positive integer",
    ),
    (v.check_seed, {}, [-1, 2**32, 1.5, True, None], "in [0, 2**32)"),
    (
        v.check_fraction,
        {},
        [0, 1, 0.0, 1.0, -0.2, True, float("nan")],
        "between 0 and 1 (exclusive)",
    ),
]


def _accepted_cases():
    cases = []
    for check, kwargs, pairs in ACCEPTED:
        for value, expected in pairs:
            cases.append(
                pytest.param(
                    check,
                    kwargs,
                    value,
                    expected,
                    id=f"{check.__name__}-{kwargs}-{value!r}",
                )
            )
    return cases


def _refused_cases():
    cases = []
    for check, kwargs, values, allowed in REFUSED:
        for value in values:
            cases.append(
                pytest.param(
                    check,
                    kwargs,
                    value,
                    allowed,
                    id=f"{check.__name__}-{kwargs}-{value!r}",
                )
            )
    return cases


@pytest.mark.parametrize("check, kwargs, value, expected", _accepted_cases())
def test_accepted_values_come_back_as_python_values(
    check, kwargs, value, expected
):
    out = check("arg_name", value, **kwargs)
    assert out == expected
    assert type(out) is type(expected)


@pytest.mark.parametrize("check, kwargs, value, allowed", _refused_cases())
def test_refused_values_raise_naming_the_argument(
    check, kwargs, value, allowed
):
    with pytest.raises(ValueError) as info:
        check("arg_name", value, **kwargs)
    message = str(info.value)
    assert message.startswith("`arg_name` must be ")
    assert allowed in message
    assert f"Received: arg_name={value!r}" in message


@pytest.mark.parametrize("value", [1, -7, np.int8(3), np.uint64(2)])
def test_is_integer_accepts_integers(value):
    assert v.is_integer(value)


@pytest.mark.parametrize("value", [True, np.bool_(True), 1.0, "1", None])
def test_is_integer_refuses_the_rest(value):
    assert not v.is_integer(value)


@pytest.mark.parametrize("value", [1, 0.5, -2.0, np.float32(3), np.int64(2)])
def test_is_real_accepts_finite_numbers(value):
    assert v.is_real(value)


@pytest.mark.parametrize(
    "value", [True, float("nan"), float("inf"), "1.0", None, 1j]
)
def test_is_real_refuses_the_rest(value):
    assert not v.is_real(value)


# -- data given as arrays -----------------------------------------------------


def test_data_label():
    assert v.data_label("x", None) == "`x`"
    assert v.data_label("y", "probe_data") == "y of `probe_data`"


def _xy(n=4):
    return np.zeros((n, 3), "float32"), np.zeros((n,), "int32")


def test_check_data_returns_the_example_count():
    x, y = _xy()
    assert v.check_data(x, y) == 4
    assert v.check_data({"a": x, "b": x}, [y, y], np.ones(4)) == 4
    assert v.check_data(keras.ops.convert_to_tensor(x), y) == 4


@pytest.mark.parametrize(
    "x, y, sample_weight, error, words",
    [
        (np.zeros((4, 3)), np.zeros(5), None, ValueError, "same number"),
        (np.zeros((4, 3)), np.zeros(4), np.ones(3), ValueError, "same number"),
        (np.zeros((0, 3)), np.zeros(0), None, ValueError, "no examples"),
        (None, np.zeros(4), None, ValueError, "not None"),
        ([], np.zeros(4), None, ValueError, "holds no array"),
        (np.float32(1), np.zeros(4), None, TypeError, "first axis"),
        ([1.0, 2.0], np.zeros(2), None, TypeError, "numpy.asarray"),
        (np.array([["a"]]), np.zeros(1), None, TypeError, "hold numbers"),
        (
            np.array([[1.0], [np.nan]]),
            np.zeros(2),
            None,
            ValueError,
            "1 NaN or infinite value(s)",
        ),
        (iter([1, 2]), np.zeros(2), None, TypeError, "an iterator"),
    ],
)
def test_check_data_refusals(x, y, sample_weight, error, words):
    with pytest.raises(error) as info:
        v.check_data(x, y, sample_weight)
    assert words in str(info.value)


def test_check_data_names_the_argument_and_adds_the_hint():
    with pytest.raises(ValueError, match="x of `probe_data`"):
        v.check_data(np.zeros((0, 2)), np.zeros(0), name="probe_data")
    with pytest.raises(TypeError, match="Take them out first."):
        v.check_data(iter([1]), np.zeros(1), hint="Take them out first.")


def test_check_probe_data():
    x, y = _xy()
    assert v.check_probe_data([x, y]) == (x, y)
    w = np.ones(4)
    assert v.check_probe_data((x, y, w)) == (x, y, w)
    for bad in (x, (x,), (x, y, w, w)):
        with pytest.raises(ValueError, match="`probe_data` must be a tuple"):
            v.check_probe_data(bad)
    with pytest.raises(ValueError, match="`data` must be .* or None"):
        v.check_probe_data(x, name="data", allow_none=True)
    with pytest.raises(ValueError, match="y of `probe_data`"):
        v.check_probe_data((x, np.zeros(3)))


def _classifier(loss):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.compile(loss=loss)
    return model


@pytest.mark.parametrize(
    "loss",
    [
        "sparse_categorical_crossentropy",
        keras.losses.SparseCategoricalCrossentropy(),
    ],
)
def test_check_labels_refuses_labels_beyond_the_outputs(loss):
    model = _classifier(loss)
    v.check_labels(model, np.array([0, 3, 2]), [(None, 4)])
    v.check_labels(model, np.array([[0], [3]]), [(None, 4)])
    with pytest.raises(ValueError) as info:
        v.check_labels(model, np.array([0, 4, -1]), [(None, 4)], name="data")
    message = str(info.value)
    assert "y of `data` holds the label 4" in message
    assert "2 bad in all" in message
    assert "integers in [0, 4)" in message


def test_check_labels_allows_the_ignored_class():
    loss = keras.losses.SparseCategoricalCrossentropy(ignore_class=-1)
    v.check_labels(_classifier(loss), np.array([0, -1]), [(None, 4)])
    with pytest.raises(ValueError, match=r"or -1 \(ignore_class\)"):
        v.check_labels(_classifier(loss), np.array([0, 9]), [(None, 4)])


def test_check_labels_ignores_other_losses():
    # Targets that are not class indices are the loss's to judge.
    for loss in ("mse", "categorical_crossentropy"):
        v.check_labels(_classifier(loss), np.array([9, -3]), [(None, 4)])
