"""Tests of keras_fa.train and AlignmentHistory.

The record is checked against an independent run of the same model with
`model.train_on_batch` and `Alignment` on the same batches; learning and
alignment on the digits data set are checked with thresholds whose reason
is stated.
"""

import functools
import math

import keras
import numpy as np
import pytest

import keras_fa
from keras_fa.alignment import MEASURES
from keras_fa.alignment import OUTPUT_KERNEL
from keras_fa.alignment import Alignment
from tests._alignment_models import mlp
from tests._alignment_models import mlp_data

GRADIENT_MEASURES = ("signal_angle", "update_angle")
WEIGHT_MEASURES = tuple(m for m in MEASURES if m not in GRADIENT_MEASURES)


@functools.lru_cache(maxsize=None)
def _digits():
    return keras_fa.datasets.load_digits()


def _model(feedback="fa", optimizer=None, hidden=32, seed=0):
    """A compiled 64 -> hidden (ReLU) -> 10 classifier; the same `seed`
    gives the same weights and feedback weights."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras_fa.FADense(
                hidden,
                activation="relu",
                feedback=feedback,
                seed=1,
                name="hidden",
            ),
            keras_fa.FADense(10, feedback=feedback, seed=2, name="output"),
        ]
    )
    model.compile(
        optimizer or keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _keys(layers, measures):
    keys = []
    for layer in layers:
        for measure in measures:
            # The output layer has no outgoing weights: no conservation law.
            if layer == "output" and measure.startswith("conservation"):
                continue
            keys.append(f"{layer}/{measure}")
    return keys


WEIGHT_KEYS = _keys(["hidden", "output"], WEIGHT_MEASURES)
GRADIENT_KEYS = _keys(["hidden", "output"], GRADIENT_MEASURES)


def _finite(values):
    return np.isfinite(np.asarray(values, dtype=float))


def test_record_has_every_step_and_every_epoch():
    (x, y), (x_test, y_test) = _digits()
    x, y = x[:200], y[:200]  # 7 steps an epoch: 6 of 32, then one of 8
    model = _model()
    every = 3
    record = keras_fa.train(
        model,
        x,
        y,
        epochs=2,
        batch_size=32,
        every=every,
        validation_data=(x_test[:100], y_test[:100]),
        seed=0,
        verbose=0,
    )
    assert isinstance(record, keras_fa.AlignmentHistory)
    assert record.model is model
    assert record.epoch == [0, 1]
    assert record.params["steps_per_epoch"] == 7
    assert int(model.optimizer.iterations) == 14

    steps = record.steps
    assert steps["step"] == list(range(1, 15))
    assert steps["epoch"] == [0] * 7 + [1] * 7
    # Counts are ints, as in the callbacks' records; measures are floats.
    assert all(type(v) is int for v in steps["step"] + steps["epoch"])
    assert all(type(v) is float for v in steps["loss"])
    for key in [*WEIGHT_KEYS, "loss", "accuracy"]:
        assert len(steps[key]) == 14, key
        assert _finite(steps[key]).all(), key
    # Measured on the batch about to be trained on at steps 1, 4, 7, ...
    measured = [(s - 1) % every == 0 for s in steps["step"]]
    for key in GRADIENT_KEYS:
        assert list(_finite(steps[key])) == measured, key

    history = record.history
    expected = {
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "time",
        *WEIGHT_KEYS,
        *GRADIENT_KEYS,
    }
    assert set(history) == expected
    for key, values in history.items():
        assert len(values) == 2, key
        assert _finite(values).all(), key
    # Epoch values of the training metrics are the means over the examples
    # of the step values (the last batch is smaller).
    sizes = np.array([32] * 6 + [8])
    for key in ("loss", "accuracy"):
        by_epoch = np.reshape(steps[key], (2, 7))
        np.testing.assert_allclose(
            history[key], by_epoch @ sizes / sizes.sum(), rtol=1e-5
        )
    # The validation values are those of the model at the end.
    final = model.evaluate(
        x_test[:100], y_test[:100], verbose=0, return_dict=True
    )
    np.testing.assert_allclose(
        [history["val_loss"][-1], history["val_accuracy"][-1]],
        [final["loss"], final["accuracy"]],
        rtol=1e-5,
    )


def test_loop_trains_as_train_on_batch_and_measures_the_probe():
    """The record equals a hand-written loop of `train_on_batch` and
    `Alignment` on the same batches: measuring does not change training,
    the gradient measures are taken on the probe before the step, the
    weight measures after it."""
    (x_all, y_all), _ = _digits()
    x, y = x_all[:100], y_all[:100]  # batches of 32, 32, 32 and 4
    weights = np.linspace(0.5, 1.5, len(x)).astype("float32")
    probe = (x_all[200:264], y_all[200:264])
    every = 2

    record = keras_fa.train(
        _model(),
        x,
        y,
        epochs=1,
        batch_size=32,
        every=every,
        probe_data=probe,
        sample_weight=weights,
        shuffle=False,
        verbose=0,
    )

    model = _model()
    meter = Alignment(model)
    meter.reference = meter.conservation()
    on_first_batch = meter.measure(x[:32], y[:32])
    expected = {key: [] for key in record.steps}
    for step, start in enumerate(range(0, len(x), 32)):
        end = start + 32
        row = dict.fromkeys(expected, math.nan)
        if step % every == 0:
            row.update(
                {k: v for k, v in meter.measure(*probe).items() if k in row}
            )
        model.reset_metrics()
        logs = model.train_on_batch(
            x[start:end], y[start:end], weights[start:end], return_dict=True
        )
        row.update(meter.weights())
        row.update(logs, step=step + 1, epoch=0)
        for key in expected:
            expected[key].append(float(row[key]))

    assert set(expected) == {
        "step",
        "epoch",
        "loss",
        "accuracy",
        *WEIGHT_KEYS,
        *GRADIENT_KEYS,
    }
    for key, values in expected.items():
        np.testing.assert_allclose(
            record.steps[key], values, rtol=1e-5, atol=1e-6, err_msg=key
        )
    # The probe, not the training batch, was measured.
    assert (
        abs(
            record.steps["hidden/update_angle"][0]
            - on_first_batch["hidden/update_angle"]
        )
        > 1e-3
    )
    # The epoch end is measured on the probe too, after the last step.
    at_end = meter.measure(*probe)
    for key in [*WEIGHT_KEYS, *GRADIENT_KEYS]:
        np.testing.assert_allclose(
            record.history[key][-1], at_end[key], rtol=1e-5, atol=1e-6
        )
    for a, b in zip(record.model.variables, model.variables):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a),
            keras.ops.convert_to_numpy(b),
            rtol=1e-6,
        )


def test_same_seed_same_record():
    (x, y), _ = _digits()
    x, y = x[:96], y[:96]

    def run(seed):
        record = keras_fa.train(
            _model(),
            x,
            y,
            epochs=1,
            batch_size=32,
            every=2,
            seed=seed,
            verbose=0,
        )
        record.history.pop("time")
        return record

    first, again, other = run(3), run(3), run(4)
    assert set(first.steps) == set(again.steps)
    for key in first.steps:
        np.testing.assert_array_equal(first.steps[key], again.steps[key], key)
    assert set(first.history) == set(again.history)
    for key in first.history:
        np.testing.assert_array_equal(first.history[key], again.history[key])
    # Another seed shuffles the examples into other batches.
    assert not np.allclose(first.steps["loss"], other.steps["loss"])


def test_fa_learns_digits_and_its_updates_align():
    (x, y), (x_test, y_test) = _digits()
    model = _model("fa", keras.optimizers.Adam(1e-2), hidden=64)
    record = keras_fa.train(
        model,
        x,
        y,
        epochs=3,
        batch_size=64,
        every=4,
        validation_data=(x_test, y_test),
        seed=0,
        verbose=0,
    )
    # Chance is 0.1; a 64-unit fa network gets past 0.8 in three epochs,
    # so 0.5 leaves room for seeds and backends.
    assert record.history["val_accuracy"][-1] > 0.5
    angles = np.asarray(record.steps["hidden/update_angle"])
    angles = angles[np.isfinite(angles)]
    assert len(angles) == math.ceil(3 * 22 / 4)
    # A random B starts the hidden layer's update near 90 degrees from
    # backprop's; fa aligns it within a few dozen steps (to 55-70 degrees
    # here, over seeds and backends). Below 80 is clearly aligned.
    assert angles[0] > 75
    assert np.mean(angles[-4:]) < 80
    # The output layer's update is always the true gradient.
    output = np.asarray(record.steps["output/update_angle"])
    assert np.nanmax(output) < 1e-2


def test_bp_measures_as_backprop_and_every_none_measures_epoch_ends():
    (x, y), _ = _digits()
    record = keras_fa.train(
        _model("bp"),
        x[:96],
        y[:96],
        epochs=2,
        batch_size=32,
        every=None,
        verbose=0,
    )
    # No gradient measure at the steps, only at the ends of the epochs.
    assert not [key for key in record.steps if key in GRADIENT_KEYS]
    for key in WEIGHT_KEYS:
        assert _finite(record.steps[key]).all(), key
    for key in GRADIENT_KEYS:
        values = record.history[key]
        assert len(values) == 2 and all(0 <= v < 1e-2 for v in values), key
    for layer in ("hidden", "output"):
        assert set(record.steps[f"{layer}/weight_angle"]) == {0.0}
        np.testing.assert_allclose(
            record.steps[f"{layer}/norm_ratio"], 1.0, rtol=1e-6
        )


def test_progress_bar_and_plot(capsys, tmp_path):
    (x, y), (x_test, y_test) = _digits()
    record = keras_fa.train(
        _model(),
        x[:64],
        y[:64],
        epochs=2,
        batch_size=32,
        every=1,
        validation_data=(x_test[:32], y_test[:32]),
        verbose=1,
    )
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out
    assert "accuracy: " in out and "loss: " in out
    # The last line of each epoch shows its end values, to 4 decimals:
    # the hidden layer's update angle and the validation loss.
    history = record.history
    for epoch in (0, 1):
        assert (
            f"update_angle: {history['hidden/update_angle'][epoch]:.4f}" in out
        )
        assert f"val_loss: {history['val_loss'][epoch]:.4f}" in out

    paths = record.plot(tmp_path)
    names = sorted(path.rsplit("/", 1)[-1] for path in map(str, paths))
    for name in (
        "training.png",
        "update_angle.png",
        "signal_angle.png",
        "weight_angle.png",
        "layer_hidden.png",
        "layer_output.png",
    ):
        assert name in names, names
    for path in paths:
        with open(path, "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"

    keras_fa.train(record.model, x[:64], y[:64], batch_size=32, verbose=0)
    assert capsys.readouterr().out == ""


PROBE_ERROR = r"tuple \(x, y\) or \(x, y, sample_weight\) of arrays, or None"


def test_numpy_integers_and_weighted_probe_are_accepted():
    (x, y), _ = _digits()
    x, y = x[:64], y[:64]
    probe = (x[:16], y[:16], np.linspace(0.5, 1.5, 16).astype("float32"))
    record = keras_fa.train(
        _model(),
        x,
        y,
        epochs=np.int64(1),
        batch_size=np.int32(32),
        every=np.int64(1),
        probe_data=probe,
        verbose=0,
    )
    assert record.steps["step"] == [1, 2]
    angles = [
        v for k, v in record.history.items() if k.endswith("/update_angle")
    ]
    assert angles and all(np.isfinite(a[-1]) for a in angles)


def test_bad_arguments_name_what_is_allowed():
    (x, y), _ = _digits()
    x, y = x[:64], y[:64]
    uncompiled = keras.Sequential(
        [keras.Input((64,)), keras_fa.FADense(10, seed=1)]
    )
    with pytest.raises(ValueError, match="compiled model"):
        keras_fa.train(uncompiled, x, y)
    model = _model()
    cases = [
        ({"epochs": 0}, "`epochs` must be a positive integer"),
        ({"epochs": 1.5}, "`epochs` must be a positive integer"),
        ({"batch_size": -1}, "`batch_size` must be a positive integer"),
        ({"every": 0}, "`every` must be a positive integer"),
        ({"every": True}, "`every` must be a positive integer"),
        ({"epochs": "2"}, "`epochs` must be a positive integer.*epochs='2'"),
        ({"weights_every": "a"}, "`weights_every` must be a positive"),
        (
            {"seed": "a"},
            r"`seed` must be an integer in \[0, 2\*\*32\).*seed='a'",
        ),
        ({"seed": -1}, r"`seed` must be an integer in \[0, 2\*\*32\)"),
        ({"seed": 1.5}, "`seed` must be an integer in"),
        ({"shuffle": "batch"}, "`shuffle` must be True or False"),
        ({"validation_data": x[:8]}, "`validation_data` must be a tuple"),
        (
            {"validation_data": (x[:8], y[:8] + 10)},
            r"y of `validation_data` holds the label 1\d .* 10 outputs",
        ),
        ({"probe_data": x[:8]}, PROBE_ERROR),
        ({"probe_data": (x[:8],)}, PROBE_ERROR),
        ({"probe_data": (x[:8], y[:8], y[:8], y[:8])}, PROBE_ERROR),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            keras_fa.train(model, x, y, verbose=0, **kwargs)
    with pytest.raises(ValueError, match="`verbose` must be 0 .*verbose='a'"):
        keras_fa.train(model, x, y, verbose="a")
    with pytest.raises(ValueError, match="`x`: 64, `y`: 63"):
        keras_fa.train(model, x, y[:63], verbose=0)
    # Nothing was trained.
    assert int(model.optimizer.iterations) == 0


def test_bad_data_is_refused_before_any_step():
    (x, y), _ = _digits()
    x, y = x[:64], y[:64]
    nan = x.copy()
    nan[5, 7] = np.nan
    model = _model()
    cases = [
        ((x[:0], y[:0]), {}, ValueError, "`x` has no examples"),
        ((nan, y), {}, ValueError, r"`x` holds 1 NaN .* \(5, 7\)"),
        ((x, y), {"sample_weight": np.ones(3)}, ValueError, "`x`: 64"),
        ((x.tolist(), y), {}, TypeError, "`x` must be an array .* numpy"),
        ((x, y + 1), {}, ValueError, r"`y` holds the label 10 .*\[0, 10\)"),
        ((x[:, :8], y), {}, ValueError, r"cannot take `x` \(shape \(32, 8\)"),
        (
            (x, y),
            {"probe_data": (x[:8], y[:8] + 10)},
            ValueError,
            "y of `probe_data` holds the label",
        ),
        (
            (x, y),
            {"probe_data": (x[:8], y[:4])},
            ValueError,
            "x of `probe_data`: 8, y of `probe_data`: 4",
        ),
        (
            (x, y),
            {"probe_data": (x[:8, :3], y[:8])},
            ValueError,
            "cannot take x of `probe_data`",
        ),
        ((iter(x), y), {}, TypeError, "takes arrays.*model.fit"),
    ]
    for args, kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            keras_fa.train(model, *args, verbose=0, **kwargs)
    assert int(model.optimizer.iterations) == 0


def test_a_data_set_is_refused_with_what_to_use_instead():
    tf = pytest.importorskip("tensorflow")
    (x, y), _ = _digits()
    dataset = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(16)
    model = _model()
    with pytest.raises(TypeError, match="tf.data.Dataset") as error:
        keras_fa.train(model, dataset, None, verbose=0)
    message = str(error.value)
    assert "model.fit" in message and "AlignmentCallback" in message
    with pytest.raises(TypeError, match="PyDataset"):
        keras_fa.train(model, _Batches(x[:64], y[:64]), None, verbose=0)
    assert int(model.optimizer.iterations) == 0


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return 2

    def __getitem__(self, index):
        part = slice(32 * index, 32 * (index + 1))
        return self.x[part], self.y[part]


def test_non_finite_loss_stops_training_with_a_warning():
    # Finite data, a learning rate that makes the weights overflow.
    (x, y), _ = _digits()
    model = _model(optimizer=keras.optimizers.SGD(1e30))
    with pytest.warns(UserWarning, match="the loss is nan at step") as caught:
        record = keras_fa.train(
            model,
            x[:96],
            y[:96],
            epochs=3,
            batch_size=16,
            every=None,
            verbose=0,
        )
    [warning] = [w for w in caught if "the loss is" in str(w.message)]
    losses = record.steps["loss"]
    step = len(losses)
    # Stopped at the first non-finite loss, in the first of 3 epochs.
    assert f"at step {step} (epoch 0)" in str(warning.message)
    assert "TerminateOnNaN" in str(warning.message)
    # The warning points at the caller of keras_fa.train.
    assert warning.filename == __file__
    assert step < 6 and not math.isfinite(losses[-1])
    assert all(math.isfinite(v) for v in losses[:-1])
    assert record.steps["step"] == list(range(1, step + 1))
    assert record.epoch == [0] and len(record.history["loss"]) == 1
    assert int(model.optimizer.iterations) == step


def test_weights_every_thins_the_weight_record():
    (x, y), _ = _digits()
    record = keras_fa.train(
        _model(),
        x[:96],
        y[:96],
        batch_size=16,
        every=None,
        weights_every=3,
        verbose=0,
    )
    angles = record.steps["hidden/weight_angle"]
    assert record.steps["step"] == list(range(1, 7))
    recorded = [not np.isnan(a) for a in angles]
    assert recorded == [False, False, True, False, False, True]
    with pytest.raises(ValueError, match="`weights_every` must be"):
        keras_fa.train(_model(), x[:32], y[:32], weights_every=0)


def test_train_records_the_conservation_status():
    model = mlp("fa")
    x, y = mlp_data()
    record = keras_fa.train(model, x, y, batch_size=12, every=None, verbose=0)
    assert record.conservation_status == Alignment(model).conservation_status
    names = [layer.name for layer in model.layers]
    assert list(record.conservation_status.values()) == [
        "holds",
        "holds",
        OUTPUT_KERNEL,
    ]
    assert f"{names[0]}/conservation" in record.history
    assert f"{names[2]}/conservation" not in record.history
