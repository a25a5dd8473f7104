"""Fitting: determinism for a seed, partial_fit, warm_start, early
stopping, and the learning-rate schedules (against MLPClassifier's
rules).

Fits are small and do not measure the alignment (`alignment_every=0`).
"""

import copy

import keras
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.neural_network import MLPClassifier

from keras_fa import FAClassifier
from keras_fa import FARegressor
from tests._estimator_helpers import assert_same_state
from tests._estimator_helpers import differs
from tests._estimator_helpers import digits
from tests._estimator_helpers import fast
from tests._estimator_helpers import numpy_values
from tests._estimator_helpers import three_classes

# Keeps the many short fits quiet (test_max_iter_warns checks the warning).
pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning"
)


# ----------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("rule", ["fa", "brsf", "dfa", "drtp"])
def test_same_random_state_same_fit(rule):
    """Two fits with the same int random_state are identical, whatever the
    global Keras and numpy seeds in between; another random_state gives
    other weights and other feedback."""
    X, y = three_classes(n=150)
    params = fast(hidden_layer_sizes=(8, 6), feedback=rule, random_state=11)
    first = FAClassifier(**params).fit(X, y)
    keras.utils.set_random_seed(99)
    np.random.seed(99)
    second = FAClassifier(**params).fit(X, y)
    np.testing.assert_array_equal(
        second.predict_proba(X), first.predict_proba(X)
    )
    assert second.loss_curve_ == first.loss_curve_
    assert_same_state(second, first)

    other = FAClassifier(**{**params, "random_state": 12}).fit(X, y)
    for a, b in zip(other.coefs_, first.coefs_):
        assert not np.array_equal(a, b)
    feedback = [
        (a, b, variable.path)
        for a, b, variable in zip(
            numpy_values(other.model_.variables),
            numpy_values(first.model_.variables),
            other.model_.variables,
        )
        if "feedback" in variable.path
    ]
    assert feedback
    for a, b, path in feedback:
        assert not np.array_equal(a, b), path


# ----------------------------------------------------------------------
# partial_fit and warm_start


def test_partial_fit_grows_records():
    """partial_fit with `classes` learns labels it has not seen yet; each
    call runs one epoch: loss_curve_ grows by one, t_ counts the examples,
    the weights move and the loss falls over calls."""
    X, y = three_classes(n=120)
    estimator = FAClassifier(**fast(learning_rate_init=0.02))
    first = y < 2
    estimator.partial_fit(X[first], y[first], classes=np.array([0, 1, 2]))
    np.testing.assert_array_equal(estimator.classes_, [0, 1, 2])
    assert estimator.predict_proba(X).shape == (120, 3)
    seen = int(first.sum())
    assert estimator.loss_curve_ and len(estimator.loss_curve_) == 1
    assert estimator.t_ == seen
    for call in range(2, 6):
        before = copy.deepcopy(estimator)
        estimator.partial_fit(X, y)
        seen += len(y)
        assert len(estimator.loss_curve_) == call
        assert estimator.t_ == seen
        assert estimator.n_iter_ == 1
        assert differs(estimator, before)
    assert estimator.loss_curve_[-1] < estimator.loss_curve_[1]


@pytest.mark.parametrize("estimator_class", [FAClassifier, FARegressor])
def test_partial_fit_epochs_equal_fit_epochs(estimator_class):
    """k calls of partial_fit on the data are, bit for bit, a fit of k
    epochs (without shuffling): the optimizer state carries over between
    calls."""
    X, y = three_classes(n=60)
    if estimator_class is FARegressor:
        y = X[:, 0] + X[:, 1] ** 2
    params = fast(max_iter=4, shuffle=False, learning_rate_init=0.01)
    fitted = estimator_class(**params).fit(X, y)
    incremental = estimator_class(**params)
    extra = {"classes": np.unique(y)} if estimator_class is FAClassifier else {}
    for _ in range(4):
        incremental.partial_fit(X, y, **extra)
        extra = {}
    assert incremental.loss_curve_ == fitted.loss_curve_
    assert incremental.t_ == fitted.t_ == 4 * len(y)
    assert_same_state(incremental, fitted)


def test_warm_start_continues():
    """With warm_start a second fit continues from the first's weights:
    loss_curve_ and t_ grow across fits and the second fit starts near
    where the first ended; without it a refit starts over."""
    X, y = digits(200)
    params = fast(
        hidden_layer_sizes=(16,),
        max_iter=4,
        batch_size=50,
        learning_rate_init=0.01,
    )
    warm = FAClassifier(**params, warm_start=True).fit(X, y)
    first_curve = list(warm.loss_curve_)
    warm.fit(X, y)
    assert warm.loss_curve_[:4] == first_curve
    assert len(warm.loss_curve_) == 8
    assert warm.n_iter_ == 4
    assert warm.t_ == 8 * len(y)
    assert warm.loss_curve_[4] < (first_curve[0] + first_curve[-1]) / 2

    cold = FAClassifier(**params).fit(X, y)
    cold.fit(X, y)
    assert cold.loss_curve_ == first_curve
    assert cold.t_ == 4 * len(y)


# ----------------------------------------------------------------------
# Early stopping and learning-rate schedules


def test_early_stopping():
    """Early stopping records the held-out accuracy of every epoch, stops
    before max_iter once n_iter_no_change + 1 epochs bring no improvement
    of tol, and keeps the weights of the best epoch (a fit stopped by
    max_iter at that epoch has them, bit for bit)."""
    X, y = make_classification(
        n_samples=200,
        n_features=5,
        n_informative=3,
        n_redundant=0,
        class_sep=3.0,
        random_state=0,
    )
    params = fast(
        hidden_layer_sizes=(16,),
        early_stopping=True,
        n_iter_no_change=2,
        max_iter=100,
        batch_size=20,
        learning_rate_init=0.01,
    )
    estimator = FAClassifier(**params).fit(X, y)
    scores = estimator.validation_scores_
    assert 3 <= estimator.n_iter_ < 100
    assert len(scores) == len(estimator.loss_curve_) == estimator.n_iter_
    assert estimator.best_validation_score_ == max(scores) > 0.9
    assert estimator.best_loss_ is None
    window = params["n_iter_no_change"] + 1
    assert max(scores[-window:]) < max(scores[:-window]) + estimator.tol

    best_epoch = int(np.argmax(scores)) + 1
    shorter = FAClassifier(**{**params, "max_iter": best_epoch}).fit(X, y)
    assert shorter.validation_scores_ == scores[:best_epoch]
    for a, b in zip(shorter.coefs_, estimator.coefs_):
        np.testing.assert_array_equal(a, b)


def _learning_rate(estimator):
    return float(
        keras.ops.convert_to_numpy(estimator.model_.optimizer.learning_rate)
    )


def test_adaptive_learning_rate_divides_by_five():
    """With sgd and learning_rate='adaptive', every n_iter_no_change + 1
    epochs without improvement divide the learning rate by 5 (tol is huge,
    so no epoch after the first improves): after 5 epochs it is
    init / 25. Until it falls to 1e-6, when training stops at the epoch
    MLPClassifier stops at."""
    X, y = three_classes(n=60)
    params = fast(
        solver="sgd",
        learning_rate="adaptive",
        learning_rate_init=0.1,
        tol=1e6,
        n_iter_no_change=1,
        max_iter=5,
    )
    estimator = FAClassifier(**params).fit(X, y)
    assert estimator.n_iter_ == 5
    assert _learning_rate(estimator) == pytest.approx(0.1 / 25, rel=1e-6)

    params["max_iter"] = 100
    estimator = FAClassifier(**params).fit(X, y)
    reference = MLPClassifier(
        **{k: v for k, v in params.items() if k != "alignment_every"}
    ).fit(X, y)
    assert estimator.n_iter_ == reference.n_iter_ < 100
    # The first 0.1 / 5^k not above 1e-6: the next stall stops the fit.
    assert _learning_rate(estimator) == pytest.approx(0.1 / 5**8, rel=1e-6)


def test_adaptive_is_for_sgd_only():
    """With adam, learning_rate='adaptive' does nothing: a stall stops the
    fit after n_iter_no_change + 1 epochs (as in MLPClassifier) with the
    learning rate untouched."""
    X, y = three_classes(n=60)
    params = fast(
        learning_rate="adaptive",
        learning_rate_init=0.01,
        tol=1e6,
        n_iter_no_change=1,
        max_iter=50,
    )
    estimator = FAClassifier(**params).fit(X, y)
    reference = MLPClassifier(
        **{k: v for k, v in params.items() if k != "alignment_every"}
    ).fit(X, y)
    assert estimator.n_iter_ == reference.n_iter_ == 3
    assert _learning_rate(estimator) == pytest.approx(0.01, rel=1e-6)


def test_invscaling_learning_rate():
    """With sgd and learning_rate='invscaling' the learning rate after the
    fit is learning_rate_init / (t_ + 1) ** power_t."""
    X, y = three_classes(n=60)
    estimator = FAClassifier(
        **fast(
            solver="sgd",
            learning_rate="invscaling",
            learning_rate_init=0.5,
            power_t=0.25,
            max_iter=3,
        )
    ).fit(X, y)
    assert estimator.t_ == 3 * 60
    assert _learning_rate(estimator) == pytest.approx(
        0.5 / (3 * 60 + 1) ** 0.25, rel=1e-6
    )


def test_invscaling_learning_rate_reaches_the_step():
    """The scheduled learning rate is the one the compiled epoch uses: with
    plain sgd (no momentum) and one minibatch an epoch, the second epoch's
    update under invscaling is the constant schedule's second update (from
    the same first epoch) times 1 / (n + 1) ** power_t."""
    X, y = three_classes(n=60)
    params = fast(
        solver="sgd",
        momentum=0.0,
        learning_rate_init=0.5,
        power_t=0.5,
        shuffle=False,
    )
    scaled = FAClassifier(**{**params, "max_iter": 2})
    scaled.set_params(learning_rate="invscaling").fit(X, y)
    one = FAClassifier(**{**params, "max_iter": 1}).fit(X, y)
    two = FAClassifier(**{**params, "max_iter": 2}).fit(X, y)
    ratio = 1.0 / (60 + 1) ** 0.5
    weights = zip(
        scaled.coefs_ + scaled.intercepts_,
        one.coefs_ + one.intercepts_,
        two.coefs_ + two.intercepts_,
    )
    for w_scaled, w_one, w_two in weights:
        step = w_two - w_one
        assert np.abs(step).max() > 1e-3
        np.testing.assert_allclose(
            w_scaled - w_one, ratio * step, rtol=1e-3, atol=1e-6
        )
