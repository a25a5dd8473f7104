"""A training loop that records alignment at every step."""

import math
import numbers
import time

import keras
import numpy as np

from keras_fa import alignment as alignment_lib

_DATA_MEASURES = ("signal_angle", "update_angle")


class AlignmentHistory:
    """What `keras_fa.train` returns: the training record, per epoch and per
    step.

    Attributes:
        history: dict like `keras.callbacks.History.history`: each key (loss,
            metrics, `val_*`, and `"<layer>/<measure>"` alignment measures at
            the end of each epoch) maps to a list with one value per epoch.
        steps: dict mapping each key to one value per training step, with
            the global step numbers (from 1) under `"step"` and the epoch
            under `"epoch"`. Measures taken only every few steps hold NaN in
            between.
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
        append_row(table, {key: float(value) for key, value in row.items()})

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
    return keras.tree.map_structure(lambda a: a[index], data)


def _length(x):
    lengths = {len(a) for a in keras.tree.flatten(x)}
    if len(lengths) != 1:
        raise ValueError(
            f"All inputs must have the same number of examples. Received "
            f"lengths {sorted(lengths)}."
        )
    return lengths.pop()


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
    if probe_data is not None and (
        not isinstance(probe_data, (tuple, list))
        or len(probe_data) not in (2, 3)
    ):
        raise ValueError(
            "`probe_data` must be a tuple (x, y) or (x, y, sample_weight), "
            "or None."
        )
    n = _length(x)
    if _length(y) != n:
        raise ValueError(
            f"x has {n} examples but y has {_length(y)}: they must match."
        )
    if not model.built:
        model(_take(x, np.arange(min(n, batch_size))))
    # One meter per model: its compiled functions serve every call.
    meter = alignment_lib._meter(model)
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
            sw = None if sample_weight is None else sample_weight[index]
            row = {}
            if every is not None and step % every == 0:
                probe = probe_data or (xb, yb)
                values = meter.measure(*probe)
                row.update(_only(values, _DATA_MEASURES))
                angle = _mean_angle(values, hidden)
            # train_on_batch resets the metrics: logs are this batch's.
            logs = model.train_on_batch(xb, yb, sw, return_dict=True)
            step += 1
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
