"""A training loop that records alignment at every step."""

import math
import time
import warnings

import keras
import numpy as np

from keras_fa import alignment
from keras_fa._validation import check_bool
from keras_fa._validation import check_data
from keras_fa._validation import check_labels
from keras_fa._validation import check_positive_integer
from keras_fa._validation import check_probe_data
from keras_fa._validation import check_seed
from keras_fa.history import AlignmentHistory

_DATA_MEASURES = ("signal_angle", "update_angle")
_ARRAYS_ONLY = (
    "keras_fa.train takes arrays; to record alignment while training on a "
    "data set, use model.fit(dataset, callbacks=["
    "keras_fa.callbacks.AlignmentCallback(probe_data)])."
)
# A warning of a step names the caller of `train`: _Loop._step,
# _Loop.epoch and train stand in between.
_STACKLEVEL = 4
# What `AlignmentHistory.params` holds.
_PARAMS = ("epochs", "batch_size", "every", "weights_every", "steps_per_epoch")


# long: its public docstring is 60 lines; the body is 25, in named steps.
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
    options = _check_options(
        model, epochs, batch_size, every, weights_every, shuffle, seed, verbose
    )
    batch_size = options["batch_size"]
    data = (x, y, sample_weight)
    n = check_data(*data, hint=_ARRAYS_ONLY)
    if probe_data is not None:
        probe_data = check_probe_data(probe_data, allow_none=True)
    if validation_data is not None:
        validation_data = check_probe_data(
            validation_data, name="validation_data", allow_none=True
        )
    meter = _check_model(
        model, data, (n, batch_size), probe_data, validation_data
    )
    options["steps_per_epoch"] = math.ceil(n / batch_size)
    record = AlignmentHistory(model, {key: options[key] for key in _PARAMS})
    record.conservation_status = meter.conservation_status
    meter.reset_reference()
    loop = _Loop(meter, record, data, probe_data, validation_data, options)
    for epoch in range(options["epochs"]):
        loop.epoch(epoch, n)
        if loop.stopped:
            break
    return record


# -- checking the arguments ---------------------------------------------------


def _check_options(
    model, epochs, batch_size, every, weights_every, shuffle, seed, verbose
):
    # The arguments that are not data, checked in the order of the
    # signature, as a dict.
    if not getattr(model, "compiled", False):
        raise ValueError(
            "keras_fa.train needs a compiled model: call "
            "model.compile(optimizer, loss, metrics) first."
        )
    options = {
        "epochs": check_positive_integer("epochs", epochs),
        "batch_size": check_positive_integer("batch_size", batch_size),
        "every": None
        if every is None
        else check_positive_integer("every", every),
        "weights_every": check_positive_integer("weights_every", weights_every),
        "shuffle": check_bool("shuffle", shuffle),
        "seed": None if seed is None else check_seed("seed", seed),
    }
    if isinstance(verbose, bool) or verbose not in (0, 1):
        raise ValueError(
            "`verbose` must be 0 (silent) or 1 (a progress bar). Received: "
            f"verbose={verbose!r}"
        )
    options["verbose"] = int(verbose)
    return options


def _check_model(model, data, sizes, probe_data, validation_data):
    """Checks that the model and its loss take a batch of each data set
    (`sizes`: the number of examples and the batch size), and that all
    their labels are classes of the model's output; returns the model's
    meter."""
    x, y, sample_weight = data
    n, batch_size = sizes
    head = np.arange(min(n, batch_size))
    first = _take(x, head)
    if not model.built:
        try:
            model(first)
        except Exception as error:
            raise ValueError(f"The model cannot take `x`: {error}") from error
    # One meter per model: its compiled functions serve every call.
    meter = alignment.meter(model)
    meter.check_batch(
        first,
        _take(y, head),
        None if sample_weight is None else _take(sample_weight, head),
    )
    outputs = meter.output_shapes(first)
    check_labels(model, y, outputs)
    if probe_data is not None:
        meter.check_batch(*probe_data, name="probe_data")
    if validation_data is not None:
        size = keras.tree.flatten(validation_data[0])[0].shape[0]
        head = np.arange(min(size, batch_size))
        meter.check_batch(
            *(_take(part, head) for part in validation_data),
            name="validation_data",
        )
        check_labels(model, validation_data[1], outputs, name="validation_data")
    return meter


# -- the loop -----------------------------------------------------------------


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


class _Loop:
    """The epochs of one `train` call: its steps, their measurements and
    the records. `stopped` turns True after a non-finite loss."""

    def __init__(self, meter, record, data, probe_data, validation_data, opts):
        self.meter = meter
        self.model = meter.model
        self.record = record
        self.data = data
        self.probe_data = probe_data
        self.validation_data = validation_data
        self.options = opts
        self.rng = np.random.default_rng(opts["seed"])
        self.hidden = meter.layer_names[:-1]  # the output layer's angles are 0
        self.step = 0
        self.stopped = False
        self.angle = math.nan

    def epoch(self, epoch, n):
        """Trains on every batch once, then records the epoch."""
        options = self.options
        self.record.epoch.append(epoch)
        progbar = self._progbar(epoch)
        totals, count, self.angle = {}, 0, math.nan
        start = time.perf_counter()
        for index in _batches(
            n, options["batch_size"], options["shuffle"], self.rng
        ):
            batch = [
                None if part is None else _take(part, index)
                for part in self.data
            ]
            logs = self._step(batch, epoch)
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + float(value) * len(index)
            count += len(index)
            if progbar is not None:
                self._show_step(progbar, logs, count)
            if self.stopped:
                break
        epoch_logs = {key: total / count for key, total in totals.items()}
        self._end_epoch(epoch_logs, batch, start, progbar)

    def _step(self, batch, epoch):
        # Measures (every `every` steps), trains on the batch, records.
        xb, yb, sw = batch
        every = self.options["every"]
        row = {}
        if every is not None and self.step % every == 0:
            values = self.meter.measure(*(self.probe_data or (xb, yb)))
            row.update(_only(values, _DATA_MEASURES))
            self.angle = _mean_angle(values, self.hidden)
        # train_on_batch resets the metrics: logs are this batch's.
        logs = self.model.train_on_batch(xb, yb, sw, return_dict=True)
        self.step += 1
        loss = float(logs.get("loss", 0.0))
        if not math.isfinite(loss):
            warnings.warn(
                f"keras_fa.train: the loss is {loss} at step {self.step} "
                f"(epoch {epoch}): training stops after this epoch's "
                "record, as keras.callbacks.TerminateOnNaN stops "
                "model.fit. Check the data, or lower the learning rate.",
                stacklevel=_STACKLEVEL,
            )
            self.stopped = True
        if self.step % self.options["weights_every"] == 0:
            row.update(self.meter.weights())
        row.update({k: float(v) for k, v in logs.items()})
        self.record._append(
            self.record.steps, {"step": self.step, "epoch": epoch, **row}
        )
        return logs

    def _end_epoch(self, epoch_logs, batch, start, progbar):
        # Every measure on the probe (or the last batch), the validation.
        xb, yb, _ = batch
        epoch_logs.update(self.meter.measure(*(self.probe_data or (xb, yb))))
        if self.validation_data is not None:
            val = self.model.evaluate(
                *self.validation_data,
                batch_size=self.options["batch_size"],
                verbose=0,
                return_dict=True,
            )
            epoch_logs.update({f"val_{k}": float(v) for k, v in val.items()})
        epoch_logs["time"] = time.perf_counter() - start
        self.record._append(self.record.history, epoch_logs)
        if progbar is not None:
            self._show_epoch(progbar, epoch_logs)

    # -- the progress bar -----------------------------------------------------

    def _progbar(self, epoch):
        if not self.options["verbose"]:
            return None
        progbar = keras.utils.Progbar(
            self.options["steps_per_epoch"], stateful_metrics=["update_angle"]
        )
        print(f"Epoch {epoch + 1}/{self.options['epochs']}")
        return progbar

    def _show_step(self, progbar, logs, count):
        shown = [(k, float(v)) for k, v in logs.items()]
        if not math.isnan(self.angle):
            shown.append(("update_angle", self.angle))
        batch_size = self.options["batch_size"]
        progbar.update(math.ceil(count / batch_size), shown, finalize=False)

    def _show_epoch(self, progbar, epoch_logs):
        # Running means of the training metrics are already shown.
        shown = [(k, v) for k, v in epoch_logs.items() if k.startswith("val_")]
        progbar.stateful_metrics.update(k for k, _ in shown)
        shown.append(("update_angle", _mean_angle(epoch_logs, self.hidden)))
        progbar.update(self.options["steps_per_epoch"], shown, True)


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
