"""A training loop that records alignment at every step."""

import math
import numbers
import time
import warnings

import keras
import numpy as np

from keras_fa import alignment as alignment_lib

_DATA_MEASURES = ("signal_angle", "update_angle")
# Columns of `AlignmentHistory.steps` that count: ints, not floats.
_COUNTS = ("step", "epoch")
_ARRAYS_ONLY = (
    "keras_fa.train takes arrays; to record alignment while training on a "
    "data set, use model.fit(dataset, callbacks=["
    "keras_fa.callbacks.AlignmentCallback(probe_data)])."
)


class AlignmentHistory:
    """What `keras_fa.train` returns: the training record, per epoch and per
    step.

    Attributes:
        history: dict like `keras.callbacks.History.history`: each key (loss,
            metrics, `val_*`, and `"<layer>/<measure>"` alignment measures at
            the end of each epoch) maps to a list with one value per epoch.
        steps: dict mapping each key to one value per training step, with
            the step numbers of this call (ints, from 1) under `"step"` and
            the epoch (an int) under `"epoch"`. Measures taken only every
            few steps hold NaN in between.
        epoch: the list of epoch indices.
        conservation_status: `{kernel: "holds" or "not applicable:
            <reason>"}`: the kernels with conservation measures, and why the
            others have none (see `keras_fa.alignment`).
        params: the loop's arguments.
        model: the trained model.
    """

    def __init__(self, model, params):
        self.model = model
        self.params = params
        self.history = {}
        self.steps = {}
        self.epoch = []
        self.conservation_status = {}

    def plot(self, directory, **kwargs):
        """Writes PNG figures of this history; see
        `keras_fa.plot_alignment`. Returns the paths written."""
        from keras_fa.plotting import plot_alignment

        return plot_alignment(self, directory, **kwargs)

    def _append(self, table, row):
        append_row(
            table,
            {
                key: value if key in _COUNTS else float(value)
                for key, value in row.items()
            },
        )

    def __repr__(self):
        return (
            f"AlignmentHistory(epochs={len(self.epoch)}, "
            f"steps={len(self.steps.get('step', []))}, "
            f"keys={sorted(self.history)})"
        )


def append_row(table, row):
    """Appends `row` to a table of equal-length columns (a dict of lists),
    padding with NaN the columns the row lacks and the past of new ones."""
    length = len(next(iter(table.values()))) if table else 0
    for key, value in row.items():
        table.setdefault(key, [math.nan] * length).append(value)
    for column in table.values():
        if len(column) == length:
            column.append(math.nan)


def _batches(n, batch_size, shuffle, rng):
    order = rng.permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def _take(data, index):
    def take(array):
        if isinstance(array, np.ndarray):
            return array[index]
        # A tf.Tensor takes no array of indices.
        return keras.ops.take(array, index, axis=0)

    return keras.tree.map_structure(take, data)


def _check_positive_int(name, value, allow_none=False):
    if allow_none and value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 1
    ):
        raise ValueError(
            f"`{name}` must be a positive integer"
            f"{' or None' if allow_none else ''}. Received: {name}={value!r}"
        )
    return int(value)


def _check_options(shuffle, seed, verbose):
    if not isinstance(shuffle, (bool, np.bool_)):
        raise ValueError(
            f"`shuffle` must be True or False. Received: shuffle={shuffle!r}"
        )
    if seed is not None and (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or seed < 0
    ):
        raise ValueError(
            "`seed` must be a non-negative integer or None. Received: "
            f"seed={seed!r}"
        )
    if isinstance(verbose, bool) or verbose not in (0, 1):
        raise ValueError(
            "`verbose` must be 0 (silent) or 1 (a progress bar). Received: "
            f"verbose={verbose!r}"
        )


def train(
    model,
    x,
    y,
    *,
    epochs=1,
    batch_size=32,
    every=10,
    weights_every=1,
    probe_data=None,
    validation_data=None,
    sample_weight=None,
    shuffle=True,
    seed=None,
    verbose=1,
):
    """Trains a compiled model and records its alignment at every step.

    A plain Python loop over `model.train_on_batch`, so the model's own
    optimizer, loss, metrics and compiled train step are used on every
    backend. At every step it records the loss and metrics of the batch and
    the measures that need only the weights (`weight_angle`, `norm_ratio`,
    conservation and its drift since the start): one small compiled function
    of the weights. Every `every` steps, and at the end of each epoch, it
    also records `signal_angle` and `update_angle`, which compare the rule's
    gradients with backprop's on a batch and cost about two extra training
    steps on it.

    Args:
        model: a compiled Keras model (keras_fa layers or direct feedback).
        x: training inputs: an array, or a list or dict of arrays.
        y: training targets.
        epochs: number of passes over the data.
        batch_size: examples per step.
        every: measure the gradient-based angles every this many steps
            (on the batch about to be trained on, before the update), or
            None for epoch ends only. Each such measurement runs the model
            forward and backward twice on the batch: `every=1` makes
            training about 3-5x slower.
        weights_every: record the weight measures every this many steps
            (default 1: every step). They read every kernel about three
            times, which costs `O(parameters)`, not `O(batch * parameters)`
            as a step does: on a 2-core CPU, 0.6 ms (jax) to 1.5 ms
            (tensorflow) a step for a 0.67M-parameter MLP whose steps take
            2-7 ms (`benchmarks/alignment_cost.py`).
        probe_data: optional fixed `(x, y)` or `(x, y, sample_weight)`
            batch for the gradient-based angles instead of the training
            batch.
        validation_data: optional `(x, y)`, evaluated at each epoch end.
        sample_weight: optional per-example weights of `x`.
        shuffle: shuffle the examples at each epoch.
        seed: seed of the shuffling.
        verbose: 1 shows a progress bar with loss, metrics and the mean
            `update_angle` of the hidden layers; 0 is silent.

    Returns:
        An `AlignmentHistory` with `history` (per epoch), `steps` (per step)
        and `plot(directory)`.

    Everything is checked before the first step, with an error naming the
    argument: the data must be arrays (a data set or generator is refused:
    use `model.fit` with `keras_fa.callbacks.AlignmentCallback`), with the
    same number of examples in `x`, `y` and `sample_weight`, at least one,
    numeric and finite; the model must take `x` and `probe_data`; with a
    sparse categorical loss, labels must be classes of the model's output.
    If the loss of a step is NaN or infinite, training stops after that
    step's epoch is recorded, as `keras.callbacks.TerminateOnNaN` stops
    `model.fit`, with a warning naming the step.

    Example:

    >>> model.compile(keras.optimizers.SGD(0.05), loss, metrics=["accuracy"])
    >>> record = keras_fa.train(model, x, y, epochs=5, every=10)
    >>> record.steps["fa_dense/update_angle"][:20:10]
    >>> record.plot("figures")
    """
    if not getattr(model, "compiled", False):
        raise ValueError(
            "keras_fa.train needs a compiled model: call "
            "model.compile(optimizer, loss, metrics) first."
        )
    epochs = _check_positive_int("epochs", epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    every = _check_positive_int("every", every, allow_none=True)
    weights_every = _check_positive_int("weights_every", weights_every)
    _check_options(shuffle, seed, verbose)
    n = alignment_lib.check_data(x, y, sample_weight, hint=_ARRAYS_ONLY)
    if probe_data is not None:
        probe_data = alignment_lib.check_probe_data(probe_data, allow_none=True)
    if validation_data is not None:
        validation_data = alignment_lib.check_probe_data(
            validation_data, name="validation_data", allow_none=True
        )
    head = np.arange(min(n, batch_size))
    first = _take(x, head)
    if not model.built:
        try:
            model(first)
        except Exception as error:
            raise ValueError(f"The model cannot take `x`: {error}") from error
    # One meter per model: its compiled functions serve every call.
    meter = alignment_lib._meter(model)
    # The model and its loss take a batch of each data set, and all their
    # labels are classes of the model's output.
    meter.check_batch(
        first,
        _take(y, head),
        None if sample_weight is None else _take(sample_weight, head),
    )
    outputs = meter._output_spec(first)
    alignment_lib._check_labels(model, y, outputs)
    if probe_data is not None:
        meter.check_batch(*probe_data, name="probe_data")
    if validation_data is not None:
        size = keras.tree.flatten(validation_data[0])[0].shape[0]
        head = np.arange(min(size, batch_size))
        meter.check_batch(
            *(_take(part, head) for part in validation_data),
            name="validation_data",
        )
        alignment_lib._check_labels(
            model, validation_data[1], outputs, name="validation_data"
        )
    record = AlignmentHistory(
        model,
        {
            "epochs": epochs,
            "batch_size": batch_size,
            "every": every,
            "weights_every": weights_every,
            "steps_per_epoch": math.ceil(n / batch_size),
        },
    )
    rng = np.random.default_rng(seed)
    hidden = meter.layer_names[:-1]  # the output layer's angles are 0
    record.conservation_status = meter.conservation_status
    meter.reset_reference()
    step = 0
    stopped = False
    for epoch in range(epochs):
        record.epoch.append(epoch)
        progbar = (
            keras.utils.Progbar(
                record.params["steps_per_epoch"],
                stateful_metrics=["update_angle"],
            )
            if verbose
            else None
        )
        if verbose:
            print(f"Epoch {epoch + 1}/{epochs}")
        totals, count, angle = {}, 0, math.nan
        start = time.perf_counter()
        for index in _batches(n, batch_size, shuffle, rng):
            xb, yb = _take(x, index), _take(y, index)
            sw = None if sample_weight is None else _take(sample_weight, index)
            row = {}
            if every is not None and step % every == 0:
                probe = probe_data or (xb, yb)
                values = meter.measure(*probe)
                row.update(_only(values, _DATA_MEASURES))
                angle = _mean_angle(values, hidden)
            # train_on_batch resets the metrics: logs are this batch's.
            logs = model.train_on_batch(xb, yb, sw, return_dict=True)
            step += 1
            loss = float(logs.get("loss", 0.0))
            if not math.isfinite(loss):
                warnings.warn(
                    f"keras_fa.train: the loss is {loss} at step {step} "
                    f"(epoch {epoch}): training stops after this epoch's "
                    "record, as keras.callbacks.TerminateOnNaN stops "
                    "model.fit. Check the data, or lower the learning rate.",
                    stacklevel=2,
                )
                stopped = True
            if step % weights_every == 0:
                row.update(meter.weights())
            row.update({k: float(v) for k, v in logs.items()})
            record._append(record.steps, {"step": step, "epoch": epoch, **row})
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + float(value) * len(index)
            count += len(index)
            if progbar is not None:
                shown = [(k, float(v)) for k, v in logs.items()]
                if not math.isnan(angle):
                    shown.append(("update_angle", angle))
                progbar.update(
                    math.ceil(count / batch_size), shown, finalize=False
                )
            if stopped:
                break
        epoch_logs = {key: total / count for key, total in totals.items()}
        probe = probe_data or (xb, yb)
        epoch_logs.update(meter.measure(*probe))
        if validation_data is not None:
            val = model.evaluate(
                *validation_data,
                batch_size=batch_size,
                verbose=0,
                return_dict=True,
            )
            epoch_logs.update({f"val_{k}": float(v) for k, v in val.items()})
        epoch_logs["time"] = time.perf_counter() - start
        record._append(record.history, epoch_logs)
        if progbar is not None:
            # Running means of the training metrics are already shown.
            shown = [
                (k, v) for k, v in epoch_logs.items() if k.startswith("val_")
            ]
            progbar.stateful_metrics.update(k for k, _ in shown)
            shown.append(("update_angle", _mean_angle(epoch_logs, hidden)))
            progbar.update(record.params["steps_per_epoch"], shown, True)
        if stopped:
            break
    return record


def _only(values, measures):
    return {k: v for k, v in values.items() if k.rsplit("/", 1)[-1] in measures}


def _mean_angle(values, layers):
    angles = [
        values[f"{name}/update_angle"]
        for name in layers
        if f"{name}/update_angle" in values
        and not math.isnan(values[f"{name}/update_angle"])
    ]
    return float(np.mean(angles)) if angles else math.nan
