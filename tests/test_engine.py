"""keras_fa.engine: the stateless training engine.

The minibatches of an epoch, the Trainer's epoch against the closed form of
minibatch SGD (sample weights, a penalty, a partial last batch), its chunked
prediction, the one cache of compiled functions (shared between networks
of one structure on jax only), reading and writing the variables' values,
and the one loss of a batch counting the model's added losses.
"""

import keras
import numpy as np
import pytest

from keras_fa import engine

BACKEND = keras.backend.backend()


def _linear(units=2, features=3, lr=0.1, seed=0, **dense):
    """A compiled linear model `x W + b` with an SGD optimizer, built."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((features,)), keras.layers.Dense(units, **dense)]
    )
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _values(values):
    return [keras.ops.convert_to_numpy(v).copy() for v in values]


def _numpy(variables):
    return _values([v.value for v in variables])


def test_batches_cover_every_example_once():
    """`minibatches` pads the last batch with a zero-weight row and scales
    weights so each batch's weighted mean equals scikit-learn's."""
    order = np.array([4, 0, 3, 1, 2])
    weight = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    index, w, norm, count = engine.minibatches(order, weight, 2, pad_row=5)
    np.testing.assert_array_equal(index, [[4, 0], [3, 1], [2, 5]])
    np.testing.assert_allclose(count, [2, 2, 1])
    np.testing.assert_allclose(norm, [6.0, 6.0, 3.0])
    np.testing.assert_allclose(w.sum(axis=1), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(w[2], [2.0, 0.0])
    np.testing.assert_allclose(w[0], [5 * 2 / 6, 1 * 2 / 6], rtol=1e-6)


def _sgd_epoch(W, b, X, Y, s, batch, lr, alpha):
    """One epoch of SGD on the weighted mean squared error of `x W + b`
    plus `alpha / 2 |W|^2 / norm`, in numpy; returns W, b and the sum of
    the batch losses times their sizes."""
    W, b, total = W.astype(np.float64), b.astype(np.float64), 0.0
    for start in range(0, X.shape[0], batch):
        x, y = X[start : start + batch], Y[start : start + batch]
        w = s[start : start + batch]
        norm = w.sum()
        error = x @ W + b - y
        loss = (w * (error**2).mean(axis=1)).sum() / norm
        loss += 0.5 * alpha * (W**2).sum() / norm
        total += loss * x.shape[0]
        delta = 2 * w[:, None] * error / error.shape[1] / norm
        W = W - lr * (x.T @ delta + alpha * W / norm)
        b = b - lr * delta.sum(axis=0)
    return W, b, total


def test_trainer_epoch_equals_closed_form():
    """An epoch of the Trainer (minibatches of 2 with a partial last one,
    sample weights, an L2 penalty on the kernel) is minibatch SGD written
    out in numpy: the weights and the returned loss."""
    rng = np.random.default_rng(0)
    n, alpha, lr = 5, 0.3, 0.1
    X = rng.normal(size=(n, 3)).astype(np.float32)
    Y = rng.normal(size=(n, 2)).astype(np.float32)
    s = rng.uniform(0.5, 2.0, size=n)
    model = _linear(lr=lr)
    W, b = _numpy(model.trainable_variables)

    def penalty(trainable):
        return 0.5 * alpha * keras.ops.sum(keras.ops.square(trainable[0]))

    trainer = engine.Trainer(model, penalty=penalty)
    pad = np.zeros((1, 3), np.float32), np.zeros((1, 2), np.float32)
    x = np.concatenate([X, pad[0]])
    y = np.concatenate([Y, pad[1]])
    batches = engine.minibatches(np.arange(n), s, 2, pad_row=n)
    total = trainer.epoch(x, y, *batches)
    W_want, b_want, total_want = _sgd_epoch(W, b, X, Y, s, 2, lr, alpha)
    W_got, b_got = _numpy(model.trainable_variables)
    np.testing.assert_allclose(W_got, W_want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b_got, b_want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total, total_want, rtol=1e-5)
    assert np.abs(W_got - W).max() > 1e-3
    # Without the penalty the kernel ends elsewhere: it was counted.
    W_free, _, _ = _sgd_epoch(W, b, X, Y, s, 2, lr, 0.0)
    assert np.abs(W_free - W_want).max() > 1e-4


def test_trainer_predicts_in_chunks():
    """`predict` gives the model's outputs (float64) over several chunks,
    each row independent of the others, and (0, units) on no rows."""
    model = _linear(units=4)
    trainer = engine.Trainer(model)
    x = np.random.default_rng(1).normal(size=(2500, 3)).astype(np.float32)
    out = trainer.predict(x)
    assert out.dtype == np.float64 and out.shape == (2500, 4)
    want = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(trainer.predict(x[1030:1031]), out[1030:1031])
    assert trainer.predict(x[:0]).shape == (0, 4)


def test_compiled_is_one_cache_shared_on_jax_only():
    """`compiled` builds once per key where functions are pure (jax), keeps
    the CACHE_SIZE most recent keys and forgets all on `clear_cache`;
    elsewhere, and with key None, it builds every time."""
    engine.clear_cache()
    built = []

    def build():
        built.append(1)
        return object()

    first = engine.compiled("k", build)
    second = engine.compiled("k", build)
    assert (first is second) == engine.SHARES_FUNCTIONS
    assert engine.SHARES_FUNCTIONS == (BACKEND == "jax")
    assert len(built) == (1 if engine.SHARES_FUNCTIONS else 2)
    assert engine.compiled(None, build) is not engine.compiled(None, build)
    for i in range(engine.CACHE_SIZE):
        engine.compiled(("other", i), build)
    built.clear()
    engine.compiled("k", build)
    assert len(built) == 1  # evicted (or never kept)
    engine.clear_cache()
    assert engine.compiled("k", build) is not first


def test_trainers_of_one_structure_share_compiled_functions():
    """Trainers given one key share their compiled functions on jax (a new
    model of the same structure skips compilation), and each still trains
    its own model's values: the shared trainer's epoch equals a fresh one's.
    """
    engine.clear_cache()
    x = np.random.default_rng(2).normal(size=(9, 3)).astype(np.float32)
    y = np.ones((9, 2), np.float32)
    batches = engine.minibatches(np.arange(8), None, 4, pad_row=8)
    x[8], y[8] = 0.0, 0.0
    a = engine.Trainer(_linear(seed=1), key="linear")
    model = _linear(seed=2)
    b = engine.Trainer(model, key="linear")
    assert (a._epoch is b._epoch) == (BACKEND == "jax")
    a.epoch(x, y, *batches)
    shared_total = b.epoch(x, y, *batches)
    shared = _numpy(model.trainable_variables)
    engine.clear_cache()
    model = _linear(seed=2)
    fresh = engine.Trainer(model, key="linear")
    assert fresh._epoch is not a._epoch
    assert fresh.epoch(x, y, *batches) == pytest.approx(shared_total, 1e-6)
    for got, want in zip(_numpy(model.trainable_variables), shared):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_state_and_assign_round_trip():
    """`state` reads every group of values (the optimizer's fourth with
    `optimizer=True`) and `assign` writes them back."""
    model = _linear()
    groups = engine.state(model, optimizer=True)
    assert len(groups) == 4 and len(engine.state(model)) == 3
    variables = (
        model.trainable_variables,
        model.non_trainable_variables,
        model.metrics_variables,
        model.optimizer.variables,
    )
    for group, values in zip(variables, groups):
        assert len(group) == len(values)
    start = [_values(group) for group in groups]
    engine.assign(model.trainable_variables, [v + 1.0 for v in start[0]])
    moved = engine.state(model)[0]
    for value, before in zip(moved, start[0]):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(value), before + 1
        )
    engine.assign(model.trainable_variables, start[0])
    for value, before in zip(engine.state(model)[0], start[0]):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(value), before)


def test_stateless_loss_counts_added_losses():
    """The one loss of a batch is the compiled loss plus the model's added
    losses (an L2 kernel regularizer, and an activity regularizer, which
    Keras adds with `add_loss` during the call) of the values passed in,
    not of the variables, as `model.fit` has it."""
    x = np.random.default_rng(3).normal(size=(6, 3)).astype(np.float32)
    y = np.zeros((6, 2), np.float32)
    model = _linear(
        kernel_regularizer=keras.regularizers.L2(0.1),
        activity_regularizer=keras.regularizers.L2(0.2),
    )
    _, non_trainable, metrics = engine.state(model)
    W, b = _numpy(model.trainable_variables)
    # Values other than the variables': the loss must be of these.
    W, b = 2.0 * W, b + 0.5
    loss, _ = engine.stateless_loss(model, [W, b], non_trainable, metrics, x, y)
    out = x @ W + b
    mse = np.mean((out - y) ** 2)
    # Keras divides the activity penalty by the batch size.
    penalty = 0.1 * np.sum(W**2) + 0.2 * np.sum(out**2) / len(x)
    assert penalty > 1e-3
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loss), mse + penalty, rtol=1e-5
    )
    plain = _linear()
    _, non_trainable, metrics = engine.state(plain)
    loss, _ = engine.stateless_loss(plain, [W, b], non_trainable, metrics, x, y)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss), mse, rtol=1e-5)
