"""Tests of keras_fa.callbacks: AlignmentCallback and ConservationMonitor.

The values a callback records are checked against `Alignment` run on the
model itself after training (stopped at the step in question), the step
schedule against the optimizer's own step count, and the claim that
measuring never changes training against an identical run without the
callbacks.
"""

import csv
import glob
import math
import os
import warnings

import keras
import numpy as np
import pytest

import keras_fa
from keras_fa import alignment
from keras_fa import backend
from keras_fa.alignment import MEASURES
from keras_fa.alignment import Alignment
from keras_fa.callbacks import AlignmentCallback
from keras_fa.callbacks import ConservationMonitor
from tests._alignment_models import ANGLES
from tests._alignment_models import image_data
from tests._alignment_models import kernel_units
from tests._alignment_models import layers_model
from tests.conftest import BACKEND

CONSERVATION = ("conservation", "conservation_drift", "conservation_drift_max")
# 64 examples in batches of 16: 4 training steps an epoch.
STEPS_PER_EPOCH = 4


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = rng.integers(0, 3, size=n)
    return x, y


def _mlp(feedback="fa", dropout=False):
    """A compiled 8 -> 16 (ReLU) -> 3 classifier; every call gives the same
    weights, feedback weights and random draws."""
    keras.utils.set_random_seed(0)
    layers = [
        keras.Input((8,)),
        keras_fa.FADense(
            16, activation="relu", feedback=feedback, seed=1, name="hidden"
        ),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(0.3))
    layers.append(keras_fa.FADense(3, feedback=feedback, seed=3, name="output"))
    model = keras.Sequential(layers)
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _fit(model, callbacks=(), epochs=2, **kwargs):
    x, y = _data()
    return model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=16,
        shuffle=False,
        callbacks=list(callbacks),
        verbose=0,
        **kwargs,
    )


def _probe():
    x, y = _data(n=32, seed=1)
    return x, y


def _measure_keys(values):
    return [key for key in values if "/" in key]


class _StopAfter(keras.callbacks.Callback):
    """Stops training after the given global step (from 1)."""

    def __init__(self, step):
        super().__init__()
        self.step = step
        self._seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        if self._seen == self.step:
            self.model.stop_training = True


# -- the logs ----------------------------------------------------------------


def _expected_keys():
    # The output layer has no outgoing weights: no conservation law.
    return [
        f"{layer}/{measure}"
        for layer in ("hidden", "output")
        for measure in MEASURES
        if not (layer == "output" and measure in CONSERVATION)
    ]


def test_history_and_csv_logger_record_the_measures(tmp_path):
    model = _mlp()
    align = AlignmentCallback(_probe())
    csv_path = tmp_path / "log.csv"
    history = _fit(
        model,
        [align, keras.callbacks.CSVLogger(str(csv_path))],
        epochs=3,
    )
    expected = _expected_keys()
    assert _measure_keys(history.history) == expected
    for key in expected:
        assert history.history[key] == align.history[key]
        assert len(history.history[key]) == 3
        assert all(math.isfinite(v) for v in history.history[key]), key

    with open(csv_path, newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    for key in expected:
        np.testing.assert_allclose(
            [float(row[key]) for row in rows],
            history.history[key],
            rtol=1e-6,
            err_msg=key,
        )


def _read_scalars(directory):
    """{tag: [values...]} of the scalar summaries in the event files under
    `directory`."""
    import tensorflow as tf

    values = {}
    paths = glob.glob(
        os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True
    )
    assert paths, f"no event file under {directory}"
    for path in paths:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("tensor"):
                    number = float(tf.make_ndarray(value.tensor))
                else:
                    number = value.simple_value
                values.setdefault(value.tag, []).append(number)
    return values


def test_tensorboard_records_the_measures(tmp_path):
    # Keras's TensorBoard callback writes scalars through tf.summary, whose
    # implementation is the `tensorboard` package.
    pytest.importorskip("tensorflow")
    pytest.importorskip("tensorboard")
    model = _mlp()
    board = tmp_path / "board"
    history = _fit(
        model,
        [
            AlignmentCallback(_probe()),
            keras.callbacks.TensorBoard(
                str(board), write_graph=False, profile_batch=0
            ),
        ],
        epochs=2,
    )
    scalars = _read_scalars(str(board))
    for key in _expected_keys():
        assert f"epoch_{key}" in scalars, sorted(scalars)
        np.testing.assert_allclose(
            scalars[f"epoch_{key}"], history.history[key], rtol=1e-6
        )


def test_recorded_values_equal_alignment_of_the_model():
    """The values at step 0, at step k and at the epoch end equal
    `Alignment.measure` on the model as it was then (training is stopped
    at step k, mid-epoch, to look at it)."""
    model = _mlp()
    x, y = _probe()
    weights = np.linspace(0.5, 1.5, len(x)).astype("float32")
    meter = Alignment(model)
    meter.reference = meter.conservation()
    before = meter.measure(x, y, weights)
    align = AlignmentCallback((x, y, weights), every=3)
    history = _fit(model, [align, _StopAfter(6)], epochs=3)
    assert align.steps["step"] == [0, 3, 6]
    assert align.history["epoch"] == [0, 1]
    after = meter.measure(x, y, weights)

    assert list(after) == _expected_keys()
    assert _measure_keys(history.history) == _expected_keys()
    for key in _expected_keys():
        np.testing.assert_allclose(
            [align.steps[key][0], align.steps[key][-1]],
            [before[key], after[key]],
            rtol=1e-5,
            atol=1e-6,
            err_msg=key,
        )
        np.testing.assert_allclose(
            history.history[key][-1], after[key], rtol=1e-5, atol=1e-6
        )
    # The weights moved between the measured steps (stale weights would
    # give equal values) and Q drifted from Q(0), so the checks above do
    # not compare constants.
    for key in ("hidden/weight_angle", "hidden/update_angle"):
        at_0, at_3, at_6 = align.steps[key]
        assert abs(at_3 - at_0) > 1e-4, key
        assert abs(at_6 - at_3) > 1e-4, key
    assert abs(after["hidden/conservation_drift"]) > 1e-4
    # fa, unlike bp (see below), is told apart from backprop: a random B
    # starts near 90 degrees from W, and so do the signals it sends.
    for measure in ("weight_angle", "signal_angle", "update_angle"):
        assert 45 < before[f"hidden/{measure}"] < 135, measure
    # The output layer's error signal is the true one under any rule.
    assert before["output/update_angle"] < 1e-2


# -- the schedule ------------------------------------------------------------


@pytest.mark.skipif(
    BACKEND == "torch", reason="torch has no steps_per_execution > 1"
)
def test_every_counts_steps_with_steps_per_execution():
    model = _mlp()
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=2,
    )
    align = AlignmentCallback(_probe(), every=2)
    _fit(model, [align], epochs=2)
    assert int(model.optimizer.iterations) == 2 * STEPS_PER_EPOCH
    assert align.steps["step"] == [0, 2, 4, 6, 8]


class _Iterations(keras.callbacks.Callback):
    """Records the optimizer's step count at each `on_train_batch_end`."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        backend.sync_state(self.model)
        self.seen.append(int(self.model.optimizer.iterations))


@pytest.mark.skipif(
    BACKEND == "torch", reason="torch has no steps_per_execution > 1"
)
def test_steps_are_the_optimizers_count_with_steps_per_execution():
    # 48 examples in batches of 8: an execution of 4 steps, then one of 2,
    # which Keras reports as ending at batch index 7.
    model = _mlp()
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=4,
    )
    x, y = _data(n=48)
    align = AlignmentCallback(_probe(), every=1, measures="weight_angle")
    # A multiple of 4 inside an execution is checked at its end.
    monitor = ConservationMonitor(every=4)
    counts = _Iterations()
    model.fit(
        x,
        y,
        epochs=2,
        batch_size=8,
        shuffle=False,
        callbacks=[align, monitor, counts],
        verbose=0,
    )
    assert counts.seen == [4, 6, 10, 12]
    assert align.steps["step"] == [0, 4, 6, 10, 12]
    assert monitor.steps["step"] == [0, 4, 10, 12]
    assert all(type(step) is int for step in align.steps["step"])


def test_steps_continue_the_optimizers_count_in_a_second_fit():
    model = _mlp()
    align = AlignmentCallback(_probe(), every=2, measures="update_angle")
    _fit(model, [align], epochs=1)
    assert align.steps["step"] == [0, 2, 4]
    _fit(model, [align], epochs=1)
    assert align.steps["step"] == [4, 6, 8]
    assert align.history["epoch"] == [0]
    assert int(model.optimizer.iterations) == 8


# -- models built by model.fit -------------------------------------------------


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras_fa.FADense(
            16, activation="relu", seed=1, name="hidden"
        )
        self.out = keras_fa.FADense(3, seed=3, name="output")

    def call(self, x):
        return self.out(self.hidden(x))


def _compiled(model):
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_subclassed_model_not_built_is_measured_from_step_0():
    # On tensorflow, model.fit builds such a model only in its first step.
    x, y = _probe()
    keras.utils.set_random_seed(0)
    built = _compiled(SubclassedNet())
    built(x[:1])
    before = Alignment(built).measure(x, y)
    keras.utils.set_random_seed(0)
    model = _compiled(SubclassedNet())
    assert not model.built
    monitor = ConservationMonitor(every=2)
    align = AlignmentCallback((x, y), every=2)
    # The monitor first: it starts before the probe has built the model.
    with pytest.warns(UserWarning, match="found no layer"):
        _fit(model, [monitor, align], epochs=1)
    assert align.steps["step"] == [0, 2, 4]
    assert sorted(before) == sorted(_measure_keys(align.steps))
    for key, value in before.items():
        np.testing.assert_allclose(
            align.steps[key][0], value, rtol=1e-5, atol=1e-6, err_msg=key
        )
    assert all(math.isfinite(v) for v in align.history["hidden/update_angle"])
    # A subclassed model has no graph to find the law in.
    assert monitor.history == {"epoch": [0]}


def test_conservation_monitor_of_a_model_built_in_the_first_step():
    keras.utils.set_random_seed(0)
    model = _compiled(
        keras.Sequential(
            [
                keras_fa.FADense(16, activation="relu", seed=1, name="hidden"),
                keras_fa.FADense(3, seed=3, name="output"),
            ]
        )
    )
    monitor = ConservationMonitor(every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(model, [monitor], epochs=1)
    late = [w for w in caught if "built only in the first" in str(w.message)]
    drift = monitor.steps["hidden/conservation_drift"]
    if BACKEND == "tensorflow":
        # Q(0) is taken after the step that built the model, and said so.
        assert len(late) == 1
        assert "Q(0) is taken at step 1" in str(late[0].message)
        assert monitor.steps["step"] == [1, 2, 3, 4]
    else:
        # jax and torch build it before training starts.
        assert late == []
        assert monitor.steps["step"] == [0, 1, 2, 3, 4]
    assert drift[0] == 0.0 and all(d != 0.0 for d in drift[1:])
    assert len(monitor.history["hidden/conservation_drift_max"]) == 1


@pytest.mark.parametrize(
    "dropout_seed",
    # On torch, Keras draws an unseeded Dropout's masks from torch's global
    # generator: the measurement must replay it, and restore it.
    [2, None],
)
def test_measuring_does_not_change_training(dropout_seed):
    def run(callbacks):
        # brsf redraws its B from its own random generator at every step,
        # and Dropout draws masks: measuring must advance neither.
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((8,)),
                keras_fa.FADense(
                    16, activation="relu", feedback="fa", seed=1, name="a"
                ),
                keras.layers.Dropout(0.3, seed=dropout_seed),
                keras_fa.FADense(
                    16, activation="relu", feedback="brsf", seed=2, name="b"
                ),
                keras_fa.FADense(3, feedback="fa", seed=3, name="out"),
            ]
        )
        model.compile(
            keras.optimizers.SGD(0.1),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        x, y = _data()
        # shuffle=True: a callback drawing from the global random state
        # would change the batch order.
        model.fit(x, y, epochs=1, batch_size=16, callbacks=callbacks, verbose=0)
        return model

    align = AlignmentCallback(_probe(), every=1)
    monitor = ConservationMonitor(every=1, tolerance=1e-9, action=None)
    measured = run([align, monitor])
    plain = run([])
    assert len(align.steps["step"]) == STEPS_PER_EPOCH + 1
    assert len(monitor.steps["step"]) == STEPS_PER_EPOCH + 1
    # Every variable: weights, feedback matrices and the random generators'
    # states (Dropout's, brsf's).
    names = [v.path.split("/", 1)[1] for v in measured.variables]
    assert names == [v.path.split("/", 1)[1] for v in plain.variables]
    assert any("seed_generator" in name for name in names), names
    for name, a, b in zip(names, measured.variables, plain.variables):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a),
            keras.ops.convert_to_numpy(b),
            rtol=1e-6,
            atol=0,
            err_msg=name,
        )


# -- the values --------------------------------------------------------------


@pytest.mark.parametrize(
    "dropout",
    [False, True],
)
def test_bp_layers_measure_as_backprop(dropout):
    # With dropout, both passes must see the same masks.
    model = _mlp("bp", dropout=dropout)
    align = AlignmentCallback(_probe(), every=2)
    history = _fit(model, [align], epochs=1)
    for table in (history.history, align.steps):
        for layer in ("hidden", "output"):
            assert all(v == 0.0 for v in table[f"{layer}/weight_angle"])
            np.testing.assert_allclose(
                table[f"{layer}/norm_ratio"], 1.0, rtol=1e-6
            )
            for measure in ("signal_angle", "update_angle"):
                values = table[f"{layer}/{measure}"]
                assert values and all(0 <= v < 1e-2 for v in values), values


def test_every_and_measures_select_what_is_recorded():
    model = _mlp()
    # every=3 with 4 steps an epoch: the count goes on across epochs.
    only_update = AlignmentCallback(_probe(), every=3, measures="update_angle")
    two = AlignmentCallback(
        _probe(), every=3, measures=["weight_angle", "conservation_drift_max"]
    )
    epochs = 2
    history = _fit(model, [only_update, two], epochs=epochs)
    total = epochs * STEPS_PER_EPOCH
    assert int(model.optimizer.iterations) == total
    for align, expected in [
        (only_update, ["hidden/update_angle", "output/update_angle"]),
        (
            two,
            [
                "hidden/weight_angle",
                "hidden/conservation_drift_max",
                "output/weight_angle",
            ],
        ),
    ]:
        assert align.steps["step"] == list(range(0, total + 1, 3))
        assert align.history["epoch"] == [0, 1]
        assert _measure_keys(align.history) == expected
        assert _measure_keys(align.steps) == expected
        for table, index in ((align.history, "epoch"), (align.steps, "step")):
            for key, column in table.items():
                assert len(column) == len(table[index]), key
                assert not any(math.isnan(v) for v in column), key
    assert sorted(_measure_keys(history.history)) == sorted(
        _measure_keys(only_update.history) + _measure_keys(two.history)
    )


def test_bad_arguments_name_what_is_allowed():
    probe = _probe()
    cases = [
        (
            lambda: ConservationMonitor(tolerance="big"),
            r"`tolerance` must be a finite positive number\. .*tolerance='big'",
        ),
        (
            lambda: ConservationMonitor(tolerance=math.nan),
            "`tolerance` must be a finite positive number",
        ),
        (
            lambda: ConservationMonitor(tolerance=True),
            "`tolerance` must be a finite positive number",
        ),
        (
            lambda: ConservationMonitor(every="a"),
            r"`every` must be a positive integer\. .*every='a'",
        ),
        (
            lambda: AlignmentCallback(probe, every=1.0),
            "`every` must be a positive integer",
        ),
        (
            lambda: AlignmentCallback(probe, measures=5),
            r"measure\(s\) \[5\]. Allowed: weight_angle",
        ),
        (lambda: AlignmentCallback(np.zeros((4, 8))), r"\(x, y\)"),
        (lambda: AlignmentCallback((np.zeros((4, 8)),)), r"\(x, y\)"),
        (lambda: AlignmentCallback(([1], [2], [3], [4])), r"\(x, y\)"),
        (lambda: AlignmentCallback(probe, every=0), "positive"),
        (lambda: AlignmentCallback(probe, every=2.5), "positive"),
        (lambda: AlignmentCallback(probe, every=True), "positive"),
        (
            lambda: AlignmentCallback(probe, measures=["angle"]),
            "Allowed: weight_angle, norm_ratio, signal_angle",
        ),
        (
            lambda: AlignmentCallback(probe, measures=[]),
            "Allowed: weight_angle",
        ),
        (lambda: ConservationMonitor(every=-1), "positive"),
        (lambda: ConservationMonitor(tolerance=0), "positive number"),
        (lambda: ConservationMonitor(tolerance=-1.0), "positive number"),
        (
            lambda: ConservationMonitor(tolerance=1.0, action="raise"),
            r"'warn', 'stop', None\). Received: action='raise'",
        ),
    ]
    for make, match in cases:
        with pytest.raises(ValueError, match=match):
            make()


def test_probe_data_is_checked_when_the_callback_is_made():
    x, y = _probe()
    nan = x.copy()
    nan[2, 3] = np.nan
    cases = [
        ((x[:0], y[:0]), ValueError, "x of `probe_data` has no examples"),
        (
            (x, y[:-1]),
            ValueError,
            "same number of examples .* x of `probe_data`: 32, y of "
            "`probe_data`: 31",
        ),
        ((x, y, np.ones(5)), ValueError, "sample_weight of `probe_data`: 5"),
        ((x, None), ValueError, "y of `probe_data` must be an array"),
        ((x, y.astype(str)), TypeError, "y of `probe_data` must hold numbers"),
        ((x.tolist(), y), TypeError, "x of `probe_data` must be an array"),
        ((iter(x), y), TypeError, "x of `probe_data` must be arrays"),
        ((nan, y), ValueError, r"x of `probe_data` holds 1 NaN .*\(2, 3\)"),
    ]
    for probe, error, match in cases:
        with pytest.raises(error, match=match):
            AlignmentCallback(probe)


@pytest.mark.parametrize("every", [None, 1])
def test_probe_data_is_checked_against_the_model_before_any_step(every):
    # With every=None the first measurement would come at the end of the
    # first epoch; on jax, labels out of range would give numbers.
    x, y = _probe()
    cases = [
        (
            (x, y + 1),
            r"y of `probe_data` holds the label 3 .* 3 outputs: .* "
            r"integers in \[0, 3\)",
        ),
        ((x[:, :5], y), r"cannot take x of `probe_data` \(shape \(32, 5\)\)"),
        ((x, np.eye(3)[y]), "loss cannot take y of `probe_data`"),
    ]
    for probe, match in cases:
        model = _mlp()
        with pytest.raises(ValueError, match=match):
            _fit(model, [AlignmentCallback(probe, every=every)], epochs=1)
        assert int(model.optimizer.iterations) == 0


# -- conservation ------------------------------------------------------------


def _digits_mlp(optimizer, use_bias=True):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras_fa.FADense(
                32, activation="relu", use_bias=use_bias, seed=1, name="hidden"
            ),
            keras_fa.FADense(10, use_bias=use_bias, seed=2, name="output"),
        ]
    )
    model.compile(
        optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def _digits(n=256):
    (x, y), _ = keras_fa.datasets.load_digits()
    return x[:n], y[:n]


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float64)


def _q(model):
    """Q_i of the hidden neurons, in closed form for fa (Robertson &
    Koyejo): `|w_in|^2 + b_i^2 - 2 sum_j W_out[i, j] B_out[i, j]`, and the
    incoming part `|w_in|^2 + b_i^2` alone."""
    hidden, output = model.get_layer("hidden"), model.get_layer("output")
    incoming = np.sum(_numpy(hidden.kernel) ** 2, axis=0)
    if hidden.bias is not None:
        incoming = incoming + _numpy(hidden.bias) ** 2
    outgoing = np.sum(
        _numpy(output.kernel) * _numpy(output.feedback_kernel), axis=1
    )
    return incoming - 2.0 * outgoing, incoming


@pytest.mark.parametrize("use_bias", [True, False])
def test_conservation_holds_under_small_sgd(use_bias):
    model = _digits_mlp(keras.optimizers.SGD(1e-3), use_bias)
    x, y = _digits()
    q0, incoming0 = _q(model)
    # Under gradient flow Q_i is exact; an SGD step adds O(lr^2) per neuron,
    # so with lr 1e-3 the drift stays below 1e-4 of the Q scale, whereas the
    # terms of Q move at O(lr) (checked below: the law is not met by
    # weights that do not move).
    tolerance = 1e-4 * float(np.mean(np.abs(q0)))
    monitor = ConservationMonitor(every=4, tolerance=tolerance, action="stop")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=3, batch_size=16, callbacks=[monitor], verbose=0)
    assert not [w for w in caught if "Conservation" in str(w.message)]
    assert monitor.violations == []
    assert monitor.history["epoch"] == [0, 1, 2]
    assert monitor.steps["step"] == list(range(0, 3 * 16 + 1, 4))
    assert max(monitor.steps["hidden/conservation_drift_max"]) < tolerance
    q1, incoming1 = _q(model)
    moved = np.max(np.abs(incoming1 - incoming0))
    assert moved > 10 * tolerance, (moved, tolerance)

    # What is logged is Q of the weights, Q(t) - Q(0) and max |Q_i drift|,
    # to float32 rounding of sums of about 64 terms of the Q scale.
    atol = 1e-5 * float(np.mean(np.abs(q0)))
    assert sorted(monitor.history) == [
        "epoch",
        "hidden/conservation",
        "hidden/conservation_drift",
        "hidden/conservation_drift_max",
    ]
    logged = {k: v[-1] for k, v in monitor.history.items()}
    np.testing.assert_allclose(
        logged["hidden/conservation"], np.sum(q1), rtol=1e-5
    )
    np.testing.assert_allclose(
        logged["hidden/conservation_drift"], np.sum(q1 - q0), atol=atol
    )
    np.testing.assert_allclose(
        logged["hidden/conservation_drift_max"],
        np.max(np.abs(q1 - q0)),
        atol=atol,
    )


def _adam_run(action, epochs):
    model = _digits_mlp(keras.optimizers.Adam(1e-2))
    x, y = _digits()
    # The same relative tolerance as under SGD: Adam rescales each
    # coordinate of the update, which breaks the law within an epoch.
    tolerance = 1e-4 * float(np.mean(np.abs(_q(model)[0])))
    monitor = ConservationMonitor(tolerance=tolerance, action=action)
    with pytest.warns(UserWarning, match="Conservation law of layer 'hidden'"):
        history = model.fit(
            x, y, epochs=epochs, batch_size=32, callbacks=[monitor], verbose=0
        )
    return monitor, history, tolerance


def test_conservation_monitor_stops_training_under_adam():
    monitor, history, tolerance = _adam_run("stop", epochs=4)
    # Stopped at the first check, the end of epoch 0 (8 steps).
    assert len(history.history["loss"]) == 1
    assert monitor.history["epoch"] == [0]
    [(step, layer, value)] = monitor.violations
    assert (step, layer) == (8, "hidden")
    assert value > tolerance
    assert value == history.history["hidden/conservation_drift_max"][-1]


def test_conservation_monitor_warns_and_goes_on_under_adam():
    monitor, history, tolerance = _adam_run("warn", epochs=2)
    assert len(history.history["loss"]) == 2
    assert [step for step, _, _ in monitor.violations] == [8, 16]
    assert all(value > tolerance for _, _, value in monitor.violations)


def test_conservation_monitor_warns_once_per_layer_and_fit():
    # Under Adam the law does not hold: every check drifts past 1e-3.
    model = _digits_mlp(keras.optimizers.Adam(1e-2))
    x, y = _digits(n=128)
    tolerance = 1e-3
    monitor = ConservationMonitor(every=1, tolerance=tolerance)
    silent = ConservationMonitor(every=1, tolerance=tolerance, action=None)
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(
                x,
                y,
                epochs=2,
                batch_size=32,
                callbacks=[monitor, silent],
                verbose=0,
            )
        drifts = [w for w in caught if "Conservation law" in str(w.message)]
        # Once in each fit, for the monitor that warns, saying how to
        # silence it; every drift is still recorded, by both.
        assert len(drifts) == 1
        assert "layer 'hidden'" in str(drifts[0].message)
        assert "action=None" in str(drifts[0].message)
        over = [
            (step, "hidden", value)
            for step, value in zip(
                monitor.steps["step"],
                monitor.steps["hidden/conservation_drift_max"],
            )
            if value > tolerance
        ]
        assert len(over) >= 6
        assert monitor.violations == over
        assert [v[:2] for v in silent.violations] == [v[:2] for v in over]


def test_conservation_monitor_warns_without_a_law():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras_fa.FADense(16, activation="tanh", seed=1),
            keras_fa.FADense(3, seed=2),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    monitor = ConservationMonitor()
    with pytest.warns(UserWarning, match="found no layer"):
        _fit(model, [monitor], epochs=1)
    assert monitor.history == {"epoch": [0]}


# -- direct feedback ---------------------------------------------------------


def test_direct_feedback_model_is_measured():
    keras.utils.set_random_seed(0)
    mlp = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="dense_a"),
            keras.layers.Dense(16, activation="relu", name="dense_b"),
            keras.layers.Dense(3, name="dense_out"),
        ]
    )
    model = keras_fa.direct_feedback(mlp, "dfa", seed=5)
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    align = AlignmentCallback(_probe(), every=2)
    history = _fit(model, [align], epochs=2)
    for layer in ("dense_a", "dense_b"):
        for measure in ("signal_angle", "update_angle"):
            values = history.history[f"{layer}/{measure}"]
            assert len(values) == 2
            assert all(math.isfinite(v) for v in values)
            # dfa's random projections are far from backprop's signal.
            assert all(v > 1.0 for v in values), (layer, measure, values)
        steps = align.steps[f"{layer}/update_angle"]
        assert len(steps) == len(align.steps["step"]) == 5
    assert max(history.history["dense_out/update_angle"]) < 1e-2


# -- every layer type -------------------------------------------------------


def test_callbacks_report_where_conservation_is_not_applicable():
    # One attention layer: the callbacks compile their own measures.
    model = layers_model("fa", attention=1)
    kernels = list(kernel_units(model))
    x, y = image_data(n=12)
    align = keras_fa.callbacks.AlignmentCallback((x[:6], y[:6]), every=1)
    monitor = keras_fa.callbacks.ConservationMonitor()
    with pytest.warns(UserWarning, match="does not watch") as caught:
        history = model.fit(
            x, y, batch_size=6, epochs=1, callbacks=[align, monitor], verbose=0
        )
    [message] = [
        str(w.message) for w in caught if "does not watch" in str(w.message)
    ]
    status = alignment.Alignment(model).conservation_status
    assert align.conservation_status == monitor.conservation_status == status
    for name, reason in status.items():
        if reason not in (alignment.HOLDS, alignment.OUTPUT_KERNEL):
            assert f"'{name}': {reason.split(': ', 1)[1]}" in message
    assert "'fa_dense'" not in message
    for name in kernels:
        for measure in ("weight_angle", "norm_ratio", *ANGLES[1:]):
            values = history.history[f"{name}/{measure}"]
            assert len(values) == 1 and math.isfinite(values[0]), name
        assert len(align.steps[f"{name}/update_angle"]) == 3
        conserved = f"{name}/conservation_drift_max" in history.history
        assert conserved == (status[name] == alignment.HOLDS), name
    assert [k for k in monitor.history if k != "epoch"] == [
        f"{name}/{measure}"
        for name in kernels[:3]
        for measure in (
            "conservation",
            "conservation_drift",
            "conservation_drift_max",
        )
    ]
