"""The stateless training engine shared by the meter, the estimators and
`keras_fa.train`.

Everything that runs a model as a pure function of its variables' values
goes through here:

- `state(model)` reads the values (after `backend.sync_state`, so a
  measurement in the middle of `model.fit` on jax sees the live ones) and
  `assign(variables, values)` writes them back;
- `stateless_loss(model, ...)` is the one loss of a batch: the model's
  forward pass in training mode, its own added losses (regularizers,
  `add_loss`) and its compiled loss, as Keras's trainers compute it;
- `value_and_grad` differentiates such a function (the backend's);
- `Trainer` runs a compiled model's minibatch epochs (of `minibatches`),
  one compiled call each, and predicts in chunks (the estimators' loop);
- `compiled(key, build)` is the one cache of compiled functions. A key
  names what the trace fixes (shapes, rules, structure); the values come as
  arguments, so where compiled functions are pure (jax, `SHARES_FUNCTIONS`)
  networks of the same structure reuse one compilation. Elsewhere a
  compiled function closes over its model's variables and is kept by its
  owner, not here.
"""

import collections
import math

import numpy as np
from keras import ops

from keras_fa import backend

# Whether compiled functions may be shared between models of the same
# structure: they are pure functions of the values passed in (jax) rather
# than closures over one model's variables (tensorflow, torch).
SHARES_FUNCTIONS = backend.STATELESS_OPTIMIZER
value_and_grad = backend.value_and_grad
compile_function = backend.compile_function

_CACHE = collections.OrderedDict()
# Enough for a grid search's few structures and the meters of the models a
# script keeps; each entry holds compiled code, not weights.
CACHE_SIZE = 32
# Rows per compiled forward call of `Trainer.predict`: one shape, so one
# compilation, and every row's output independent of the others in its call.
PREDICT_CHUNK = 1024


def compiled(key, build):
    """Returns the compiled function cached under `key`, or builds it.

    `build()` makes the function (usually with `compile_function`). With
    `key=None`, or on a backend whose compiled functions are closures over
    one model's variables, nothing is cached: the caller keeps what it
    builds. The cache keeps the `CACHE_SIZE` most recently used entries.
    """
    if key is None or not SHARES_FUNCTIONS:
        return build()
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    fn = _CACHE[key] = build()
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return fn


def clear_cache():
    """Forgets every cached compiled function."""
    _CACHE.clear()


def training_kwargs(model):
    """`{"training": True}` if the model's `call` takes `training`."""
    # Keras records whether `call` has a `training` argument in this
    # private attribute and passes the flag only then (Layer.__call__);
    # a stateless call must do the same.
    return {"training": True} if model._call_has_training_arg else {}


def state(model, optimizer=False):
    """Returns the values of the model's variables, as lists.

    `(trainable, non_trainable, metrics)`, and the optimizer's variables
    fourth when `optimizer` is True. Values `model.fit` keeps outside the
    variables (jax) are written back first.
    """
    backend.sync_state(model)
    groups = [
        model.trainable_variables,
        model.non_trainable_variables,
        model.metrics_variables,
    ]
    if optimizer:
        groups.append(model.optimizer.variables)
    return tuple([v.value for v in group] for group in groups)


def assign(variables, values):
    """Assigns `values[i]` to `variables[i]`."""
    for variable, value in zip(variables, values):
        variable.assign(value)


def stateless_loss(
    model,
    trainable,
    non_trainable,
    metrics,
    x,
    y,
    sample_weight=None,
    training=True,
):
    """Returns `(loss, non_trainable)` of one batch, as `model.fit` has it.

    The forward pass runs in training mode (dropout on) when `training` and
    the model takes the flag; the model's added losses (regularizers,
    `add_loss`) of this call count, as Keras's trainers count them.
    """
    kwargs = training_kwargs(model) if training else {}
    y_pred, non_trainable, losses = model.stateless_call(
        trainable, non_trainable, x, return_losses=True, **kwargs
    )
    # Keras's trainers hand a stateless call's losses to `compute_loss`
    # through this private list (keras/src/backend/jax/trainer.py).
    if losses:
        model._losses_override.clear()
        model._losses_override = losses
    try:
        loss, _ = model.stateless_compute_loss(
            trainable,
            non_trainable,
            metrics,
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )
    finally:
        if losses:
            model._losses_override.clear()
    return loss, non_trainable


def minibatches(order, sample_weight, batch_size, pad_row):
    """Returns the `(index, weight, norm, count)` arrays of one epoch.

    The examples `order` are cut into minibatches of `batch_size`, the rows
    of `index`; the last one is filled up with `pad_row` (an all-zero row
    of the data) at weight 0, so that every batch has one shape. `weight`
    holds each example's weight `w = s * batch_size / norm`, `s` its sample
    weight (1 without `sample_weight`) and `norm` the sum of `s` over its
    batch, so that a batch's mean loss is the weighted mean scikit-learn
    takes; `count` is each batch's number of real examples.

    Example:

    >>> index, weight, norm, count = minibatches(np.arange(5), None, 2, 5)
    >>> index.tolist()
    [[0, 1], [2, 3], [4, 5]]
    """
    n = order.size
    n_batches = math.ceil(n / batch_size)
    size = n_batches * batch_size
    index = np.full(size, pad_row, dtype=np.int32)
    index[:n] = order
    weight = np.zeros(size, dtype=np.float64)
    weight[:n] = 1.0 if sample_weight is None else sample_weight[order]
    index = index.reshape(n_batches, batch_size)
    weight = weight.reshape(n_batches, batch_size)
    count = np.full(n_batches, batch_size, dtype=np.float32)
    count[-1] = n - (n_batches - 1) * batch_size
    norm = weight.sum(axis=1)
    # A batch whose weights are all zero contributes nothing.
    norm[norm <= 0] = 1.0
    weight = weight * (batch_size / norm)[:, None]
    return index, weight.astype(np.float32), norm.astype(np.float32), count


class Trainer:
    """Trains a compiled model by minibatch epochs and predicts with it.

    One call of `epoch` runs a whole epoch as one compiled function: the
    minibatches are the rows of an index matrix into the training data,
    held on the device (see `minibatches`), so the loop compiles once. Each
    step's loss is `stateless_loss` with the per-example weights of
    `minibatches`, plus `penalty(trainable) / norm` where a `penalty` is
    given; its gradient is the one the model's rules give, and the model's
    optimizer applies it.

    Args:
        model: a compiled Keras model whose optimizer is built.
        penalty: optional function of the trainable values (a list, in the
            order of `model.trainable_variables`) returning a scalar added
            to each batch's loss, divided by the batch's `norm`.
        key: optional hashable naming what the compiled functions fix
            (shapes, rules, optimizer, penalty). Where compiled functions
            are pure (`SHARES_FUNCTIONS`), trainers given the same key share
            them (see `compiled`), so a new model of the same structure
            skips compilation.
    """

    def __init__(self, model, penalty=None, key=None):
        self.model = model
        self.optimizer = model.optimizer
        self._penalty = penalty
        self._epoch, self._forward = compiled(
            None if key is None else ("Trainer", key), self._compile
        )

    def _compile(self):
        epoch = (
            self._stateless_epoch
            if backend.STATELESS_OPTIMIZER
            else self._stateful_epoch
        )
        return (
            compile_function(epoch, differentiable=False),
            compile_function(self._forward_fn, differentiable=False),
        )

    def _loss(self, trainable, non_trainable, metrics, x, y, w, norm):
        loss, non_trainable = stateless_loss(
            self.model, trainable, non_trainable, metrics, x, y, w
        )
        if self._penalty is not None:
            loss = loss + self._penalty(trainable) / norm
        return loss, non_trainable

    def _step(self, trainable, non_trainable, metrics, data, i):
        x, y, index, weight, norm, count = data
        rows = index[i]
        loss, non_trainable, grads = value_and_grad(
            self._loss,
            trainable,
            non_trainable,
            metrics,
            ops.take(x, rows, axis=0),
            ops.take(y, rows, axis=0),
            weight[i],
            norm[i],
        )
        return loss * count[i], non_trainable, grads

    def _stateless_epoch(self, state, metrics, data):
        def body(i, carry):
            trainable, non_trainable, optimizer, total = carry
            loss, non_trainable, grads = self._step(
                trainable, non_trainable, metrics, data, i
            )
            trainable, optimizer = self.optimizer.stateless_apply(
                optimizer, grads, trainable
            )
            return trainable, non_trainable, optimizer, total + loss

        total = ops.zeros((), dtype="float32")
        return ops.fori_loop(0, data[2].shape[0], body, (*state, total))

    def _stateful_epoch(self, metrics, data):
        # Where the optimizer updates variables in place (tensorflow,
        # torch), the compiled epoch reads and writes them.
        model = self.model

        def body(i, total):
            trainable, non_trainable, _ = state(model)
            loss, non_trainable, grads = self._step(
                trainable, non_trainable, metrics, data, i
            )
            self.optimizer.apply(grads, model.trainable_variables)
            assign(model.non_trainable_variables, non_trainable)
            return total + loss

        total = ops.zeros((), dtype="float32")
        return ops.fori_loop(0, data[2].shape[0], body, total)

    def epoch(self, x, y, index, weight, norm, count):
        """Runs one epoch over the minibatches `x[index[i]]`.

        `x` and `y` are the training data (on the device, with the row
        `pad_row` of `minibatches` all zeros), the other arguments what
        `minibatches` returns. Returns the sum over batches of the batch
        loss times its number of examples, a float.
        """
        model = self.model
        data = (x, y, index, weight, norm, count)
        data = tuple(ops.convert_to_tensor(a) for a in data)
        if not backend.STATELESS_OPTIMIZER:
            _, _, metrics = state(model)
            return float(self._epoch(metrics, data))
        trainable, non_trainable, metrics, optimizer = state(
            model, optimizer=True
        )
        *values, total = self._epoch(
            (trainable, non_trainable, optimizer), metrics, data
        )
        groups = (
            model.trainable_variables,
            model.non_trainable_variables,
            self.optimizer.variables,
        )
        for variables, group_values in zip(groups, values):
            assign(variables, group_values)
        return float(total)

    def _forward_fn(self, trainable, non_trainable, x):
        y_pred, _ = self.model.stateless_call(trainable, non_trainable, x)
        return y_pred

    def predict(self, x):
        """Returns the model's outputs on the numpy array `x`, float64.

        `x` goes through in chunks of `PREDICT_CHUNK` rows, the last padded
        with zeros: one shape, so one compilation, and every example's
        output independent of the others predicted with it.
        """
        trainable, non_trainable, _ = state(self.model)
        outputs = []
        for start in range(0, x.shape[0], PREDICT_CHUNK):
            chunk = x[start : start + PREDICT_CHUNK]
            rows = chunk.shape[0]
            if rows < PREDICT_CHUNK:
                pad = np.zeros((PREDICT_CHUNK - rows, x.shape[1]), x.dtype)
                chunk = np.concatenate([chunk, pad])
            chunk = ops.convert_to_tensor(chunk)
            out = self._forward(trainable, non_trainable, chunk)
            outputs.append(ops.convert_to_numpy(out)[:rows])
        if not outputs:
            return np.zeros((0, self.model.outputs[0].shape[-1]))
        return np.concatenate(outputs).astype(np.float64)
