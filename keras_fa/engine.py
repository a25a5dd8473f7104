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
- `compiled(key, build)` is the one cache of compiled functions. A key
  names what the trace fixes (shapes, rules, structure); the values come as
  arguments, so where compiled functions are pure (jax, `SHARES_FUNCTIONS`)
  networks of the same structure reuse one compilation. Elsewhere a
  compiled function closes over its model's variables and is kept by its
  owner, not here.
"""

import collections

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
