"""What FAClassifier and FARegressor compute, checked three ways.

1. Against scikit-learn: with `feedback="bp"` and the same starting weights,
   an FAClassifier (FARegressor) takes the steps MLPClassifier
   (MLPRegressor) takes: same minibatches, weighted loss, L2 penalty, Adam,
   SGD with Nesterov momentum, loss curve.
2. Against numpy closed forms of the rules: one epoch of minibatch SGD with
   sample weights and a penalty, written out for fa (the error goes back
   through the fixed B) and dfa (each hidden layer gets `e B_l`), on a
   network with two hidden layers and a partial last batch. Either would
   fail if the rule fell back to backprop (the test checks the two differ).
3. Against Keras's own training step: for every rule, an epoch of the
   estimator's compiled loop equals `model.train_on_batch` on the same
   batches, from the same state (random feedback and mirror noise
   included).

The estimator's loop is compiled on jax (jit) and tensorflow (tf.function)
and eager on torch; Keras's train step is compiled the same way.
"""

import warnings

import keras
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.neural_network import MLPRegressor

import keras_fa
from keras_fa import engine
from keras_fa.estimators import network


def _data(n=50, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features))
    y = rng.integers(0, classes, size=n)
    weight = rng.uniform(0.2, 2.0, size=n)
    return X, y, weight


def _values(variables):
    return [keras.ops.convert_to_numpy(v.value).copy() for v in variables]


def _assign(variables, values):
    for variable, value in zip(variables, values):
        variable.assign(value)


# ---------------------------------------------------------------------------
# 1. Backprop equals scikit-learn's MLP.


def _sklearn_twin(estimator, sklearn_class, X, y, weight, **params):
    """Fits `estimator` once, then fits it again from its weights with a
    fresh optimizer (warm start), and does the same with scikit-learn's
    MLP started from the same weights. Returns both."""
    common = dict(
        hidden_layer_sizes=(7, 5),
        activation="tanh",
        batch_size=16,
        shuffle=False,
        alpha=0.01,
        warm_start=True,
        max_iter=3,
        tol=0.0,
        **params,
    )
    ours = estimator(feedback="bp", random_state=0, alignment_every=0, **common)
    theirs = sklearn_class(random_state=0, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y, sample_weight=weight)
        theirs.fit(X, y, sample_weight=weight)
        theirs.coefs_ = [c.astype(np.float64) for c in ours.coefs_]
        theirs.intercepts_ = [b.astype(np.float64) for b in ours.intercepts_]
        ours.loss_curve_, theirs.loss_curve_ = [], []
        ours.fit(X, y, sample_weight=weight)
        theirs.fit(X, y, sample_weight=weight)
    return ours, theirs


def _assert_same_mlp(ours, theirs):
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_):
        assert a.shape == b.shape
    for a, b in zip(ours.coefs_, theirs.coefs_):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    for a, b in zip(ours.intercepts_, theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-4)


@pytest.mark.parametrize(
    "params",
    [
        dict(solver="adam", learning_rate_init=0.05),
        dict(solver="sgd", learning_rate_init=0.1, momentum=0.9),
        dict(
            solver="sgd",
            learning_rate_init=0.1,
            momentum=0.5,
            nesterovs_momentum=False,
        ),
    ],
    ids=["adam", "sgd-nesterov", "sgd-momentum"],
)
def test_bp_classifier_takes_mlpclassifier_steps(params):
    """Backprop through FAClassifier equals MLPClassifier (multiclass
    softmax, weighted log loss, L2 penalty, minibatches with a partial last
    one) to float32 precision over 3 epochs."""
    X, y, weight = _data()
    ours, theirs = _sklearn_twin(
        keras_fa.FAClassifier, MLPClassifier, X, y, weight, **params
    )
    _assert_same_mlp(ours, theirs)
    # The steps were real: the weights moved.
    assert len(ours.loss_curve_) == 3
    assert ours.loss_curve_[-1] < ours.loss_curve_[0]


def test_bp_binary_and_multilabel_take_mlpclassifier_steps():
    """Binary targets get one logistic output and multilabel targets one
    per label, with scikit-learn's summed binary log loss."""
    X, y, weight = _data(classes=2)
    ours, theirs = _sklearn_twin(
        keras_fa.FAClassifier,
        MLPClassifier,
        X,
        y,
        weight,
        solver="adam",
        learning_rate_init=0.05,
    )
    assert ours.n_outputs_ == 1 and ours.out_activation_ == "logistic"
    _assert_same_mlp(ours, theirs)
    labels = np.stack([y, 1 - y, (X[:, 0] > 0).astype(int)], axis=1)
    ours, theirs = _sklearn_twin(
        keras_fa.FAClassifier,
        MLPClassifier,
        X,
        labels,
        weight,
        solver="adam",
        learning_rate_init=0.05,
    )
    assert ours.n_outputs_ == 3
    _assert_same_mlp(ours, theirs)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))


@pytest.mark.parametrize("outputs", [1, 2])
def test_bp_regressor_takes_mlpregressor_steps(outputs):
    """FARegressor with backprop equals MLPRegressor (half squared error;
    with two outputs the same steps, and a loss summed over the outputs
    where scikit-learn reports their mean)."""
    X, _, weight = _data()
    targets = np.stack([X[:, 0] - X[:, 1], np.sin(X[:, 2])], axis=1)
    targets = targets[:, 0] if outputs == 1 else targets
    ours, theirs = _sklearn_twin(
        keras_fa.FARegressor,
        MLPRegressor,
        X,
        targets,
        weight,
        solver="sgd",
        learning_rate_init=0.05,
    )
    if outputs == 2:
        assert ours.loss_curve_[0] > 1.5 * theirs.loss_curve_[0]
        ours.loss_curve_ = theirs.loss_curve_
    _assert_same_mlp(ours, theirs)
    np.testing.assert_allclose(
        ours.predict(X), theirs.predict(X), rtol=1e-4, atol=1e-5
    )


# ---------------------------------------------------------------------------
# 2. Closed forms of fa and dfa.


def _tanh_net(Ws, bs, X):
    hs, pre = [X], []
    for W, b in zip(Ws[:-1], bs[:-1]):
        a = hs[-1] @ W + b
        pre.append(a)
        hs.append(np.tanh(a))
    return hs, pre, hs[-1] @ Ws[-1] + bs[-1]


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _numpy_epoch(Ws, bs, feedback, rule, X, Y, weight, batch, lr, alpha):
    """One epoch of SGD (no momentum, no shuffling) of a tanh MLP with a
    softmax output, written out; returns the weights and the epoch loss.

    `rule` "fa": the error goes back through the feedback matrices
    (`delta_l = (delta_{l+1} B_{l+1}^T) * f'`); "dfa": each hidden layer
    gets the output error projected by its own matrix (`(e B_l) * f'`);
    "bp": through the forward weights.
    """
    Ws, bs = (
        [w.astype(np.float64) for w in Ws],
        [b.astype(np.float64) for b in bs],
    )
    n, total = X.shape[0], 0.0
    for start in range(0, n, batch):
        x, t = X[start : start + batch], Y[start : start + batch]
        s = weight[start : start + batch]
        norm = s.sum()
        hs, pre, z = _tanh_net(Ws, bs, x)
        p = _softmax(z)
        loss = -(s * np.log(p[t.astype(bool)])).sum() / norm
        loss += 0.5 * alpha * sum((w**2).sum() for w in Ws) / norm
        total += loss * x.shape[0]
        e = s[:, None] * (p - t) / norm
        deltas = [e]
        for layer in range(len(Ws) - 2, -1, -1):
            if rule == "dfa":
                back = e @ feedback[layer]
            else:
                B = Ws[layer + 1] if rule == "bp" else feedback[layer + 1]
                back = deltas[0] @ B.T
            deltas.insert(0, back * (1 - np.tanh(pre[layer]) ** 2))
        for layer, delta in enumerate(deltas):
            grad = hs[layer].T @ delta + alpha * Ws[layer] / norm
            Ws[layer] = Ws[layer] - lr * grad
            bs[layer] = bs[layer] - lr * delta.sum(axis=0)
    return Ws, bs, total / n


def _feedback_matrices(estimator, rule):
    if rule == "dfa":
        (head,) = [
            layer
            for layer in estimator.model_.layers
            if isinstance(layer, keras_fa.DirectFeedback)
        ]
        return _values(head.feedback_kernels)
    return [
        keras.ops.convert_to_numpy(layer.feedback_kernel)
        for layer in network.kernel_layers(estimator.model_)
    ]


@pytest.mark.parametrize("rule", ["fa", "dfa"])
def test_epoch_equals_numpy_closed_form(rule):
    """An epoch of minibatch SGD under fa / dfa equals the closed form in
    numpy, weights and loss_curve_, and is far from what backprop gives."""
    X, y, weight = _data(n=50, features=6, classes=4, seed=1)
    est = keras_fa.FAClassifier(
        (7, 5),
        activation="tanh",
        feedback=rule,
        solver="sgd",
        momentum=0.0,
        learning_rate_init=0.2,
        alpha=0.05,
        batch_size=16,
        shuffle=False,
        random_state=3,
        alignment_every=0,
    )
    classes = np.arange(4)
    est.partial_fit(X, y, sample_weight=weight, classes=classes)
    Ws, bs = est.coefs_, est.intercepts_
    feedback = _feedback_matrices(est, rule)
    est.partial_fit(X, y, sample_weight=weight)
    Y = np.eye(4)[y]
    args = (X, Y, weight, 16, 0.2, 0.05)
    W_rule, b_rule, loss = _numpy_epoch(Ws, bs, feedback, rule, *args)
    W_bp, _, _ = _numpy_epoch(Ws, bs, feedback, "bp", *args)
    for got, want in zip(est.coefs_ + est.intercepts_, W_rule + b_rule):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(est.loss_curve_[-1], loss, rtol=1e-5)
    # The rule matters: backprop would have moved the first layer elsewhere.
    step_rule = W_rule[0] - Ws[0]
    step_bp = W_bp[0] - Ws[0]
    assert np.abs(step_rule - step_bp).max() > 0.1 * np.abs(step_bp).max()


# ---------------------------------------------------------------------------
# 3. Every rule equals Keras's train step.


def _keras_epoch(model, X, Y, weight, batch):
    """The same epoch by `model.train_on_batch`, with the weights that make
    Keras's batch mean the weighted mean over the batch."""
    for start in range(0, X.shape[0], batch):
        s = weight[start : start + batch]
        model.train_on_batch(
            X[start : start + batch].astype(np.float32),
            Y[start : start + batch].astype(np.float32),
            sample_weight=(s * s.size / s.sum()).astype(np.float32),
        )


@pytest.mark.parametrize("rule", keras_fa.models.rules())
def test_epoch_equals_train_on_batch(rule):
    """For every rule, one epoch of the estimator equals an epoch of
    `train_on_batch` from the same weights, feedback, optimizer and random
    state (Adam, sample weights, a partial last batch)."""
    X, y, weight = _data(n=40, features=5, classes=3, seed=2)
    est = keras_fa.FAClassifier(
        (8, 6),
        feedback=rule,
        learning_rate_init=0.01,
        alpha=0.0,
        batch_size=16,
        shuffle=False,
        random_state=0,
        alignment_every=0,
    )
    est.partial_fit(X, y, sample_weight=weight, classes=np.arange(3))
    model = est.model_
    variables = model.variables + model.optimizer.variables
    start = _values(variables)
    est.partial_fit(X, y, sample_weight=weight)
    ours = _values(variables)
    _assign(variables, start)
    _keras_epoch(model, X, np.eye(3)[y], weight, 16)
    theirs = _values(variables)
    moved = 0
    for variable, a, b, s in zip(variables, ours, theirs, start):
        np.testing.assert_allclose(
            a, b, rtol=1e-4, atol=1e-6, err_msg=variable.path
        )
        moved += not np.array_equal(a, s)
    assert moved > 0


def test_penalty_applies_to_forward_kernels_only():
    """alpha decays the forward kernels, not the biases or kp's feedback
    matrices (kp has its own decay): with zero data gradient (all weights
    zero), one SGD step scales each kernel by exactly 1 - lr alpha / n."""
    X, y, _ = _data(n=20, features=4, classes=3)
    est = keras_fa.FAClassifier(
        (5,),
        feedback="kp",
        solver="sgd",
        momentum=0.0,
        learning_rate_init=0.1,
        alpha=2.0,
        batch_size=20,
        random_state=0,
        alignment_every=0,
    )
    est.partial_fit(X, y, classes=np.arange(3))
    before = est.coefs_
    feedback_before = _feedback_matrices(est, "kp")
    est.partial_fit(np.zeros_like(X), np.zeros_like(y))
    after = est.coefs_
    # Zero inputs: the first kernel gets no data gradient, only the decay.
    np.testing.assert_allclose(
        after[0], before[0] * (1 - 0.1 * 2.0 / 20), rtol=1e-6
    )
    # kp's B moves by its own rule only (its decay and x^T delta = 0 here).
    assert not np.allclose(after[1], before[1])
    assert np.allclose(_feedback_matrices(est, "kp")[0], feedback_before[0])


def test_shared_compiled_functions_change_nothing():
    """Networks of one structure share compiled functions (on jax): a fit
    after another of the same structure gives what it gives alone, and its
    alignment measures equal those of an unshared meter."""
    X, y, _ = _data(n=60, features=5, classes=3, seed=4)
    params = dict(
        hidden_layer_sizes=(6,), max_iter=4, alignment_every=2, tol=0.0
    )

    def fit(random_state):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return keras_fa.FAClassifier(
                random_state=random_state, **params
            ).fit(X, y)

    engine.clear_cache()
    alone = fit(1)
    engine.clear_cache()
    fit(0)
    after = fit(1)
    for a, b in zip(alone.coefs_, after.coefs_):
        np.testing.assert_array_equal(a, b)
    assert alone.alignment_curve_ == after.alignment_curve_
    x, target = X[:20].astype(np.float32), np.eye(3, dtype=np.float32)[y[:20]]
    shared = after._meter.measure(x, target)
    meter = keras_fa.alignment.Alignment(after.model_)
    meter.reference = after._meter.reference
    unshared = meter.measure(x, target)
    assert shared.keys() == unshared.keys()
    np.testing.assert_allclose(
        list(shared.values()), list(unshared.values()), rtol=1e-5, atol=1e-4
    )
    angles = [v for k, v in shared.items() if k.endswith("update_angle")]
    assert angles and angles[0] > 1.0  # fa: not backprop
