"""FAClassifier and FARegressor as scikit-learn estimators.

scikit-learn's own estimator checks first, then what users do with the
estimators: pipelines, grid search and cross-validation, cloning, pickling
(forward and feedback weights, optimizer slots and random states, checked
by continuing the training of both copies), determinism for a seed, errors
raised at fit, incremental and warm-started training, early stopping, the
learning-rate schedules (against MLPClassifier's rules), the fitted
attributes, and an import that leaves tensorflow alone on the other
backends.

Fits are small (a few epochs on a few hundred examples) and measure the
alignment only where it is the subject: elsewhere `alignment_every=0`, since
on jax a measurement compiles its own function for every new model.
"""

import copy
import functools
import os
import pickle
import subprocess
import sys

import keras
import numpy as np
import pytest
import scipy.sparse
import scipy.special
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.datasets import make_classification
from sklearn.datasets import make_multilabel_classification
from sklearn.datasets import make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.model_selection import cross_val_score
from sklearn.neural_network import MLPClassifier
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

import keras_fa
from keras_fa import FAClassifier
from keras_fa import FARegressor

# scikit-learn checks that fail for a reason of principle, with the reason.
_SAMPLE_WEIGHT_REASON = (
    "training runs in float32: the fit with integer sample weights and the "
    "fit on the correspondingly repeated (or removed) rows differ by float32 "
    "round-off, relative differences of about 1e-7 to 3e-7 in the "
    "predictions, while the check asks rtol=1e-7. (With several minibatches "
    "repeating rows also changes the batches; MLPClassifier passes this "
    "check only with solver='lbfgs', which keras_fa does not offer.) "
    "test_integer_sample_weight_equals_repeated_rows checks the same "
    "equivalence to float32 precision."
)
EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data": _SAMPLE_WEIGHT_REASON,
    "check_sample_weight_equivalence_on_sparse_data": _SAMPLE_WEIGHT_REASON,
}

# MLPClassifier/MLPRegressor parameters the estimators do not take.
NOT_TAKEN = {
    "max_fun": "a limit of solver='lbfgs', which is refused",
    "loss": "FARegressor fits the squared error only (no 'poisson')",
}

# Rules whose pickling is checked: fixed feedback, trained feedback (kp),
# feedback drawn anew at every step from a random state (brsf), and the two
# direct rules (one feedback matrix per hidden layer).
PICKLED_RULES = ("fa", "kp", "brsf", "dfa", "drtp")

# Keeps the many short fits below quiet; test_max_iter_warns checks it.
pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning"
)


@functools.lru_cache(maxsize=None)
def _digits_cached():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def _digits(n=300, start=0):
    """`n` digits (64 features in [0, 1], 10 classes) from `start`."""
    X, y = _digits_cached()
    return X[start : start + n].copy(), y[start : start + n].copy()


def _three_classes(n=120, seed=0):
    """An easy 3-class problem with 8 features."""
    return make_classification(
        n_samples=n,
        n_features=8,
        n_informative=5,
        n_classes=3,
        class_sep=2.0,
        random_state=seed,
    )


def _fast(**params):
    """Parameters of a small, quick fit, updated by `params`."""
    base = {
        "hidden_layer_sizes": (8,),
        "max_iter": 3,
        "alignment_every": 0,
        "random_state": 0,
    }
    base.update(params)
    return base


def _learns(**params):
    """Parameters of a short fit that learns digits under fa: FA needs
    more steps than backprop (its hidden updates point elsewhere at first),
    hence minibatches of 32 and ten times the default learning rate."""
    return _fast(
        hidden_layer_sizes=(32,),
        max_iter=10,
        batch_size=32,
        learning_rate_init=0.01,
        **params,
    )


def _numpy(variables):
    return [keras.ops.convert_to_numpy(v.value) for v in variables]


def _assert_same_state(a, b):
    """Every model and optimizer variable of `a` equals `b`'s, bit for bit."""
    pairs = [
        (a.model_.variables, b.model_.variables),
        (a.model_.optimizer.variables, b.model_.optimizer.variables),
    ]
    for va, vb in pairs:
        assert len(va) == len(vb) > 0
        for x, y, variable in zip(_numpy(va), _numpy(vb), va):
            np.testing.assert_array_equal(x, y, err_msg=variable.path)


def _differs(a, b):
    return any(
        not np.array_equal(x, y)
        for x, y in zip(_numpy(a.model_.variables), _numpy(b.model_.variables))
    )


# ----------------------------------------------------------------------
# 1. scikit-learn's estimator checks


@parametrize_with_checks(
    [
        FAClassifier(random_state=0, max_iter=50, alignment_every=0),
        FARegressor(random_state=0, alignment_every=0),
    ],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
    xfail_strict=True,
)
def test_sklearn_estimator_checks(estimator, check):
    """The estimators pass scikit-learn's checks (those listed in
    EXPECTED_FAILED_CHECKS fail, for the reasons given there). The
    regressor keeps max_iter=200, which check_regressors_train needs."""
    check(estimator)


@pytest.mark.parametrize("estimator_class", [FAClassifier, FARegressor])
def test_integer_sample_weight_equals_repeated_rows(estimator_class):
    """Fitting with integer weights is fitting on rows repeated that many
    times (weight 0 removes a row), to float32 precision, when the data
    fit in one minibatch; weights that repeat nothing change the fit."""
    X, y = _three_classes(n=40, seed=1)
    if estimator_class is FARegressor:
        y = X[:, 0] - 2 * X[:, 1]
    weights = np.random.RandomState(0).randint(0, 4, size=len(y))
    repeated = np.repeat(np.arange(len(y)), weights)
    params = _fast(max_iter=10, learning_rate_init=0.01, shuffle=False)
    weighted = estimator_class(**params).fit(X, y, sample_weight=weights)
    expanded = estimator_class(**params).fit(X[repeated], y[repeated])
    uniform = estimator_class(**params).fit(X, y)
    method = "predict_proba" if estimator_class is FAClassifier else "predict"
    out_weighted = getattr(weighted, method)(X)
    np.testing.assert_allclose(
        out_weighted, getattr(expanded, method)(X), rtol=2e-5, atol=1e-6
    )
    assert not np.allclose(
        out_weighted, getattr(uniform, method)(X), rtol=1e-3, atol=1e-4
    )


# ----------------------------------------------------------------------
# 2. Pipelines, grid search, cross-validation


def test_pipeline_fit_and_score():
    """A StandardScaler -> FAClassifier pipeline learns digits: held-out
    accuracy far above chance (0.1), and `score` is the accuracy of
    `predict`."""
    X, y = _digits(400)
    X_test, y_test = _digits(300, start=400)
    pipeline = make_pipeline(
        StandardScaler(),
        FAClassifier(**_learns()),
    ).fit(X, y)
    score = pipeline.score(X_test, y_test)
    assert score == np.mean(pipeline.predict(X_test) == y_test)
    assert score > 0.6
    assert pipeline[-1].n_features_in_ == 64


def test_grid_search_over_rules_and_sizes():
    """GridSearchCV tries every (feedback, hidden_layer_sizes) pair, picks
    the best by its mean score, and refits it; the rule reaches the
    estimator (bp and fa score differently on the same split)."""
    X, y = _digits(200)
    grid = {"feedback": ["bp", "fa"], "hidden_layer_sizes": [(8,), (16,)]}
    search = GridSearchCV(
        FAClassifier(**_fast(learning_rate_init=0.01)),
        grid,
        cv=2,
        scoring="neg_log_loss",
    ).fit(X, y)
    results = search.cv_results_
    assert len(results["params"]) == 4
    assert {
        (p["feedback"], p["hidden_layer_sizes"]) for p in results["params"]
    } == {(f, h) for f in grid["feedback"] for h in grid["hidden_layer_sizes"]}
    scores = np.asarray(results["mean_test_score"])
    assert np.all(np.isfinite(scores))
    assert search.best_params_ == results["params"][int(np.argmax(scores))]
    best = search.best_estimator_
    assert best.feedback == search.best_params_["feedback"]
    assert best.coefs_[0].shape == (
        64,
        search.best_params_["hidden_layer_sizes"][0],
    )
    by_params = {
        (p["feedback"], p["hidden_layer_sizes"]): s
        for p, s in zip(results["params"], results["split0_test_score"])
    }
    for hidden in grid["hidden_layer_sizes"]:
        assert by_params["bp", hidden] != by_params["fa", hidden]


def test_cross_val_score():
    """cross_val_score gives one held-out accuracy per fold, each far above
    chance, and differing between folds (each fold is its own fit)."""
    X, y = _digits(300)
    scores = cross_val_score(FAClassifier(**_learns()), X, y, cv=3)
    assert scores.shape == (3,)
    assert np.all(scores > 0.6)
    assert len(set(scores)) > 1


# ----------------------------------------------------------------------
# 3. clone, get_params, set_params


@pytest.mark.parametrize(
    "mlp_class, estimator_class",
    [(MLPClassifier, FAClassifier), (MLPRegressor, FARegressor)],
)
def test_parameters_are_mlps_plus_feedback(mlp_class, estimator_class):
    """The estimators take MLPClassifier's (MLPRegressor's) parameters with
    the same defaults, except those in NOT_TAKEN, plus `feedback` and
    `alignment_every`."""
    ours = estimator_class().get_params()
    theirs = mlp_class().get_params()
    assert set(theirs) - set(ours) <= set(NOT_TAKEN)
    assert set(ours) - set(theirs) == {"feedback", "alignment_every"}
    for name in set(ours) & set(theirs):
        assert ours[name] == theirs[name], name
    assert ours["feedback"] == "fa"


def test_clone_is_unfitted_with_identical_params():
    """clone of a fitted estimator whose rule is a FeedbackRule object is
    unfitted, has identical parameters (the rule a copy with the same
    config), and refits to exactly the same predictions."""
    X, y = _three_classes()
    rule = keras_fa.feedback.UniformSignFeedback(scale=0.05)
    estimator = FAClassifier(
        (6, 4),
        activation="tanh",
        feedback=rule,
        solver="sgd",
        alpha=0.01,
        learning_rate_init=0.05,
        max_iter=4,
        random_state=3,
        alignment_every=0,
    ).fit(X, y)
    twin = clone(estimator)
    assert not hasattr(twin, "model_")
    with pytest.raises(NotFittedError):
        check_is_fitted(twin)
    with pytest.raises(NotFittedError):
        twin.predict(X)
    params, twin_params = estimator.get_params(), twin.get_params()
    assert params.keys() == twin_params.keys()
    for name, value in params.items():
        if name == "feedback":
            assert type(twin_params[name]) is type(value)
            assert twin_params[name].get_config() == {"scale": 0.05}
        else:
            assert twin_params[name] == value, name
    twin.fit(X, y)
    np.testing.assert_array_equal(
        twin.predict_proba(X), estimator.predict_proba(X)
    )
    other = clone(estimator).set_params(
        feedback=keras_fa.feedback.UniformSignFeedback(scale=0.5)
    )
    assert not np.array_equal(
        other.fit(X, y).predict_proba(X), estimator.predict_proba(X)
    )


def test_get_params_set_params_round_trip():
    """set_params(**get_params()) of another estimator reproduces its
    parameters; set_params returns the estimator and rejects unknown
    names."""
    rule = keras_fa.feedback.KolenPollack()
    source = FARegressor(
        (3, 2), feedback=rule, alpha=0.5, batch_size=7, alignment_every=4
    )
    target = FARegressor()
    assert target.set_params(**source.get_params()) is target
    assert target.get_params() == source.get_params()
    assert target.feedback is rule
    target.set_params(feedback="dfa", max_iter=5)
    assert target.get_params()["feedback"] == "dfa"
    assert target.max_iter == 5
    with pytest.raises(ValueError, match="Invalid parameter 'no_such'"):
        target.set_params(no_such=1)


# ----------------------------------------------------------------------
# 4. Pickling


@pytest.mark.parametrize("rule", PICKLED_RULES)
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_round_trip_and_continued_training(rule, how):
    """A fitted estimator survives pickling (and deepcopy) exactly: same
    predictions, every model variable (feedback weights and random states
    included) and optimizer variable equal; and one more partial_fit on the
    original and on the copy gives identical weights, so the optimizer
    slots and random states travelled."""
    X, y = _three_classes(n=80)
    estimator = FAClassifier(
        **_fast(
            hidden_layer_sizes=(8, 6), feedback=rule, learning_rate_init=0.01
        )
    ).fit(X, y)
    paths = [v.path for v in estimator.model_.variables]
    assert any("feedback" in path for path in paths), paths
    if how == "pickle":
        twin = pickle.loads(pickle.dumps(estimator))
    else:
        twin = copy.deepcopy(estimator)
    assert twin.model_ is not estimator.model_
    np.testing.assert_array_equal(
        twin.predict_proba(X), estimator.predict_proba(X)
    )
    np.testing.assert_array_equal(twin.predict(X), estimator.predict(X))
    _assert_same_state(twin, estimator)
    assert twin.loss_curve_ == estimator.loss_curve_

    before = copy.deepcopy(estimator)
    X_more, y_more = _three_classes(n=80, seed=5)
    estimator.partial_fit(X_more, y_more)
    twin.partial_fit(X_more, y_more)
    assert _differs(estimator, before)
    _assert_same_state(twin, estimator)
    np.testing.assert_array_equal(
        twin.predict_proba(X), estimator.predict_proba(X)
    )
    assert twin.loss_curve_ == estimator.loss_curve_


@pytest.mark.parametrize(
    "rule",
    ["fa", "kp", "brsf"],
)
def test_alignment_curve_continues_after_unpickling(rule):
    """The alignment measured after unpickling continues the original's
    curve: one more partial_fit on both gives identical curves, the drift
    of the conservation law (measured against the reference taken before
    training) included."""
    X, y = _three_classes(n=80)
    estimator = FAClassifier(
        **_fast(feedback=rule, max_iter=2, alignment_every=1)
    ).fit(X, y)
    twin = pickle.loads(pickle.dumps(estimator))
    estimator.partial_fit(X, y)
    twin.partial_fit(X, y)
    curve, twin_curve = estimator.alignment_curve_, twin.alignment_curve_
    assert curve["epoch"] == [0, 1, 2, 3]
    assert curve.keys() == twin_curve.keys()
    for key, values in curve.items():
        assert np.all(np.isfinite(values)), key
        np.testing.assert_array_equal(twin_curve[key], values, err_msg=key)


# ----------------------------------------------------------------------
# 5. Determinism


@pytest.mark.parametrize("rule", ["fa", "brsf", "dfa", "drtp"])
def test_same_random_state_same_fit(rule):
    """Two fits with the same int random_state are identical, whatever the
    global Keras and numpy seeds in between; another random_state gives
    other weights and other feedback."""
    X, y = _three_classes(n=150)
    params = _fast(hidden_layer_sizes=(8, 6), feedback=rule, random_state=11)
    first = FAClassifier(**params).fit(X, y)
    keras.utils.set_random_seed(99)
    np.random.seed(99)
    second = FAClassifier(**params).fit(X, y)
    np.testing.assert_array_equal(
        second.predict_proba(X), first.predict_proba(X)
    )
    assert second.loss_curve_ == first.loss_curve_
    _assert_same_state(second, first)

    other = FAClassifier(**{**params, "random_state": 12}).fit(X, y)
    for a, b in zip(other.coefs_, first.coefs_):
        assert not np.array_equal(a, b)
    feedback = [
        (a, b, variable.path)
        for a, b, variable in zip(
            _numpy(other.model_.variables),
            _numpy(first.model_.variables),
            other.model_.variables,
        )
        if "feedback" in variable.path
    ]
    assert feedback
    for a, b, path in feedback:
        assert not np.array_equal(a, b), path


# ----------------------------------------------------------------------
# 6. Errors at fit

BAD_PARAMS = [
    ({"feedback": "no_such_rule"}, "'feedback' parameter"),
    ({"feedback": 3}, "'feedback' parameter"),
    ({"alpha": -1.0}, "'alpha' parameter"),
    ({"solver": "lbfgs"}, "solver='lbfgs' is not available.*gradient"),
    ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes must be positive"),
    ({"hidden_layer_sizes": (4, -2)}, "hidden_layer_sizes must be positive"),
    ({"hidden_layer_sizes": 0}, "'hidden_layer_sizes' parameter"),
    ({"max_iter": 0}, "'max_iter' parameter"),
]


@pytest.mark.parametrize("estimator_class", [FAClassifier, FARegressor])
@pytest.mark.parametrize(
    "params, message", BAD_PARAMS, ids=[str(p) for p, _ in BAD_PARAMS]
)
def test_bad_params_raise_at_fit_not_at_construction(
    estimator_class, params, message
):
    """A bad parameter is stored by the constructor as given and refused by
    fit (and partial_fit) with a ValueError naming it; the estimator stays
    unfitted."""
    estimator = estimator_class(**params)
    for name, value in params.items():
        assert estimator.get_params()[name] == value
    X, y = _three_classes(n=30)
    with pytest.raises(ValueError, match=message):
        estimator.fit(X, y)
    extra = {"classes": [0, 1, 2]} if estimator_class is FAClassifier else {}
    with pytest.raises(ValueError, match=message):
        estimator.partial_fit(X, y, **extra)
    assert not hasattr(estimator, "model_")


@pytest.mark.parametrize("estimator_class", [FAClassifier, FARegressor])
def test_non_numeric_params_name_the_parameter(estimator_class):
    """A string where a number goes is refused at fit with the parameter's
    name, the value and the allowed range (not "could not convert")."""
    X, y = _three_classes(n=30)
    for name in ("alpha", "learning_rate_init", "momentum", "tol"):
        estimator = estimator_class(**_fast(**{name: "a"}))
        with pytest.raises(ValueError, match=f"'{name}' parameter.*range"):
            estimator.fit(X, y)


def test_rule_names_in_any_case():
    """`feedback="FA"` fits the network `feedback="fa"` fits, as the layers
    and keras_fa.models take it; get_params and clone keep the value as
    given (scikit-learn's contract), and an unknown name is refused with
    the allowed ones."""
    X, y = _three_classes(n=40)
    lower = FAClassifier(**_fast(feedback="fa")).fit(X, y)
    upper = FAClassifier(**_fast(feedback="FA"))
    assert upper.get_params()["feedback"] == "FA"
    assert clone(upper).get_params()["feedback"] == "FA"
    upper.fit(X, y)
    assert upper.feedback == "FA"
    rules = {
        layer.feedback.name
        for layer in upper.model_.layers
        if hasattr(layer, "feedback")
    }
    assert rules == {"fa"}
    np.testing.assert_array_equal(
        upper.predict_proba(X), lower.predict_proba(X)
    )
    regressor = FARegressor(**_fast(feedback="Shallow")).fit(X, y)
    assert isinstance(regressor.model_, keras_fa.DirectFeedbackModel)
    with pytest.raises(ValueError, match=r"'fa'.*\(in any case\)"):
        FAClassifier(**_fast(feedback="FAA")).fit(X, y)


def test_partial_fit_errors():
    """partial_fit needs `classes` on its first call, refuses early
    stopping, other classes on a later call and labels outside them."""
    X, y = _three_classes(n=30)
    with pytest.raises(ValueError, match="classes must be passed on the first"):
        FAClassifier(**_fast()).partial_fit(X, y)
    with pytest.raises(ValueError, match="partial_fit does not support early"):
        FAClassifier(**_fast(early_stopping=True)).partial_fit(
            X, y, classes=[0, 1, 2]
        )
    with pytest.raises(ValueError, match="partial_fit does not support early"):
        FARegressor(**_fast(early_stopping=True)).partial_fit(X, X[:, 0])
    estimator = FAClassifier(**_fast()).partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="is not the same as on the last call"):
        estimator.partial_fit(X, y, classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="classes not in `self.classes_`"):
        estimator.partial_fit(X, y + 1)


def test_warm_start_with_other_classes_raises():
    """A warm-started fit refuses labels other than the first fit's."""
    X, y = _three_classes(n=30)
    estimator = FAClassifier(**_fast(warm_start=True)).fit(X, y)
    with pytest.raises(ValueError, match="warm_start can only be used"):
        estimator.fit(X[y < 2], y[y < 2])


@pytest.mark.parametrize("estimator_class", [FAClassifier, FARegressor])
def test_predict_before_fit_raises_not_fitted(estimator_class):
    """Every prediction method of an unfitted estimator raises
    scikit-learn's NotFittedError."""
    X, _ = _three_classes(n=10)
    estimator = estimator_class()
    methods = ["predict"]
    if estimator_class is FAClassifier:
        methods += ["predict_proba", "predict_log_proba", "decision_function"]
    for method in methods:
        with pytest.raises(NotFittedError):
            getattr(estimator, method)(X)


@pytest.mark.parametrize("estimator_class", [FAClassifier, FARegressor])
def test_wrong_number_of_features_at_predict(estimator_class):
    """Predicting on data with another number of features than at fit
    raises scikit-learn's ValueError."""
    X, y = _three_classes(n=30)
    estimator = estimator_class(**_fast(max_iter=1)).fit(X, y)
    with pytest.raises(
        ValueError, match="X has 5 features, but .* is expecting 8"
    ):
        estimator.predict(X[:, :5])


def test_max_iter_warns():
    """Stopping at max_iter before convergence warns, as MLPClassifier."""
    X, y = _three_classes(n=30)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(2\)"):
        FAClassifier(**_fast(max_iter=2)).fit(X, y)


# ----------------------------------------------------------------------
# 7. partial_fit, warm_start, early stopping, learning-rate schedules


def test_partial_fit_grows_records():
    """partial_fit with `classes` learns labels it has not seen yet; each
    call runs one epoch: loss_curve_ grows by one, t_ counts the examples,
    the weights move and the loss falls over calls."""
    X, y = _three_classes(n=120)
    estimator = FAClassifier(**_fast(learning_rate_init=0.02))
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
        assert _differs(estimator, before)
    assert estimator.loss_curve_[-1] < estimator.loss_curve_[1]


@pytest.mark.parametrize("estimator_class", [FAClassifier, FARegressor])
def test_partial_fit_epochs_equal_fit_epochs(estimator_class):
    """k calls of partial_fit on the data are, bit for bit, a fit of k
    epochs (without shuffling): the optimizer state carries over between
    calls."""
    X, y = _three_classes(n=60)
    if estimator_class is FARegressor:
        y = X[:, 0] + X[:, 1] ** 2
    params = _fast(max_iter=4, shuffle=False, learning_rate_init=0.01)
    fitted = estimator_class(**params).fit(X, y)
    incremental = estimator_class(**params)
    extra = {"classes": np.unique(y)} if estimator_class is FAClassifier else {}
    for _ in range(4):
        incremental.partial_fit(X, y, **extra)
        extra = {}
    assert incremental.loss_curve_ == fitted.loss_curve_
    assert incremental.t_ == fitted.t_ == 4 * len(y)
    _assert_same_state(incremental, fitted)


def test_warm_start_continues():
    """With warm_start a second fit continues from the first's weights:
    loss_curve_ and t_ grow across fits and the second fit starts near
    where the first ended; without it a refit starts over."""
    X, y = _digits(200)
    params = _fast(
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
    params = _fast(
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
    X, y = _three_classes(n=60)
    params = _fast(
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
    X, y = _three_classes(n=60)
    params = _fast(
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
    X, y = _three_classes(n=60)
    estimator = FAClassifier(
        **_fast(
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
    X, y = _three_classes(n=60)
    params = _fast(
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


# ----------------------------------------------------------------------
# 8. Fitted attributes


def test_fitted_attributes_string_labels():
    """String labels: classes_ sorted, predictions among them and the
    argmax of predict_proba; n_features_in_, n_iter_, loss_curve_, t_;
    coefs_, intercepts_ and n_layers_ shaped as MLPClassifier's."""
    X, y = _three_classes(n=90)
    labels = np.array(["emu", "cat", "dog"])[y]
    estimator = FAClassifier(
        **_fast(hidden_layer_sizes=(7, 5), max_iter=4, learning_rate_init=0.01)
    ).fit(X, labels)
    np.testing.assert_array_equal(estimator.classes_, ["cat", "dog", "emu"])
    predicted = estimator.predict(X)
    assert set(predicted) <= {"cat", "dog", "emu"}
    proba = estimator.predict_proba(X)
    np.testing.assert_array_equal(
        predicted, estimator.classes_[proba.argmax(1)]
    )
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        estimator.predict_log_proba(X), np.log(proba), rtol=1e-5, atol=1e-6
    )
    assert estimator.score(X, labels) == np.mean(predicted == labels)
    assert estimator.n_features_in_ == 8
    assert estimator.n_iter_ == len(estimator.loss_curve_) == 4
    assert estimator.loss_ == estimator.loss_curve_[-1]
    assert estimator.t_ == 4 * 90
    assert estimator.out_activation_ == "softmax"
    assert not hasattr(estimator, "feature_names_in_")

    reference = MLPClassifier((7, 5), max_iter=1).fit(X, labels)
    assert [c.shape for c in estimator.coefs_] == [
        c.shape for c in reference.coefs_
    ]
    assert [b.shape for b in estimator.intercepts_] == [
        b.shape for b in reference.intercepts_
    ]
    assert estimator.n_layers_ == reference.n_layers_ == 4


@pytest.mark.parametrize("rule", ["fa", "kp", "dfa"])
def test_coefs_are_the_forward_weights(rule):
    """coefs_ and intercepts_ are the forward weights, not the feedback:
    a numpy forward pass with them (tanh hidden layers) gives
    decision_function."""
    X, y = _three_classes(n=60)
    estimator = FAClassifier(
        **_fast(
            hidden_layer_sizes=(7, 5),
            activation="tanh",
            feedback=rule,
            learning_rate_init=0.01,
        )
    ).fit(X, y)
    assert len(estimator.coefs_) == len(estimator.intercepts_) == 3
    hidden = X
    for kernel, bias in zip(estimator.coefs_[:-1], estimator.intercepts_[:-1]):
        hidden = np.tanh(hidden @ kernel + bias)
    logits = hidden @ estimator.coefs_[-1] + estimator.intercepts_[-1]
    np.testing.assert_allclose(
        estimator.decision_function(X), logits, rtol=1e-4, atol=1e-5
    )


def test_predictions_do_not_depend_on_the_call():
    """An example's prediction is the same whatever else is predicted with
    it (2500 rows span several compiled chunks) and whether X comes as
    float64, float32 or a sparse matrix."""
    X, y = _three_classes(n=2500)
    estimator = FAClassifier(**_fast(max_iter=1)).fit(X[:200], y[:200])
    proba = estimator.predict_proba(X)
    pieces = [
        estimator.predict_proba(X[i : i + 700]) for i in range(0, 2500, 700)
    ]
    np.testing.assert_array_equal(np.concatenate(pieces), proba)
    np.testing.assert_array_equal(estimator.predict_proba(X[7:8]), proba[7:8])
    np.testing.assert_array_equal(
        estimator.predict_proba(X.astype(np.float32)), proba
    )
    np.testing.assert_array_equal(
        estimator.predict_proba(scipy.sparse.csr_matrix(X)), proba
    )


def _frame(library, X, names):
    """`X` as a pandas DataFrame or a pyarrow Table with columns `names`."""
    module = pytest.importorskip(library)
    if library == "pandas":
        return module.DataFrame(X, columns=names)
    return module.table({name: X[:, i] for i, name in enumerate(names)})


@pytest.mark.parametrize("library", ["pandas", "pyarrow"])
def test_feature_names_from_a_dataframe(library):
    """A data frame's column names become feature_names_in_; predicting on
    an array warns, on a frame with other names raises."""
    X, y = _three_classes(n=40)
    names = [f"f{i}" for i in range(8)]
    frame = _frame(library, X, names)
    estimator = FAClassifier(**_fast(max_iter=1)).fit(frame, y)
    np.testing.assert_array_equal(estimator.feature_names_in_, names)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        from_array = estimator.predict(X)
    np.testing.assert_array_equal(estimator.predict(frame), from_array)
    renamed = _frame(library, X, [f"g{i}" for i in range(8)])
    with pytest.raises(ValueError, match="feature names should match"):
        estimator.predict(renamed)


def test_alignment_curve_records():
    """alignment_curve_ has "epoch" (0 before training, every
    alignment_every epochs, and the last epoch) and one equally long list
    per layer and measure."""
    X, y = _three_classes(n=60)
    estimator = FAClassifier(
        **_fast(hidden_layer_sizes=(8, 6), max_iter=5, alignment_every=2)
    ).fit(X, y)
    curve = estimator.alignment_curve_
    assert curve["epoch"] == [0, 2, 4, 5]
    for key in (
        "hidden_1/update_angle",
        "hidden_2/update_angle",
        "output/update_angle",
        "hidden_1/weight_angle",
    ):
        assert key in curve, sorted(curve)
        assert len(curve[key]) == 4
        assert np.all(np.isfinite(curve[key])), key
    assert all(len(values) == 4 for values in curve.values())
    layers = {key.split("/")[0] for key in curve if key != "epoch"}
    assert layers == {"hidden_1", "hidden_2", "output"}

    silent = FAClassifier(**_fast(max_iter=2)).fit(X, y)
    assert silent.alignment_curve_ == {}


@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_alignment_of_bp_and_fa(rule):
    """Under bp the hidden layers' updates are backprop's (angle < 0.01
    degree) at every measurement; under fa the first hidden layer's update
    is far from it before training (> 30 degrees)."""
    X, y = _digits(200)
    estimator = FAClassifier(
        **_fast(hidden_layer_sizes=(16, 8), feedback=rule, alignment_every=1)
    ).fit(X, y)
    curve = estimator.alignment_curve_
    assert curve["epoch"] == [0, 1, 2, 3]
    if rule == "bp":
        for key in ("hidden_1/update_angle", "hidden_2/update_angle"):
            assert max(curve[key]) < 0.01, (key, curve[key])
    else:
        assert curve["hidden_1/update_angle"][0] > 30.0


def test_binary_classification():
    """Two classes: one logistic output; decision_function is (n,) and
    positive for classes_[1]; predict_proba is (n, 2), rows summing to 1,
    its second column the logistic of the decision."""
    X, y = make_classification(n_samples=80, n_features=6, random_state=2)
    labels = np.array(["no", "yes"])[y]
    estimator = FAClassifier(**_fast(max_iter=5, learning_rate_init=0.01)).fit(
        X, labels
    )
    assert estimator.n_outputs_ == 1
    assert estimator.out_activation_ == "logistic"
    decision = estimator.decision_function(X)
    assert decision.shape == (80,)
    proba = estimator.predict_proba(X)
    assert proba.shape == (80, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(proba[:, 1], scipy.special.expit(decision))
    np.testing.assert_array_equal(
        estimator.predict(X), np.where(decision > 0, "yes", "no")
    )


def test_multilabel_classification():
    """A label indicator matrix: one logistic output per label; predict
    returns the indicator matrix of probabilities above 0.5."""
    X, Y = make_multilabel_classification(
        n_samples=80, n_features=8, n_classes=3, random_state=0
    )
    estimator = FAClassifier(**_fast(max_iter=5, learning_rate_init=0.01)).fit(
        X, Y
    )
    np.testing.assert_array_equal(estimator.classes_, [0, 1, 2])
    assert estimator.out_activation_ == "logistic"
    proba = estimator.predict_proba(X)
    assert proba.shape == (80, 3)
    assert not np.allclose(proba.sum(axis=1), 1.0)
    predicted = estimator.predict(X)
    assert predicted.shape == (80, 3)
    np.testing.assert_array_equal(predicted, (proba > 0.5).astype(int))


def test_multioutput_regression():
    """A 2-column target: two linear outputs, predictions (n, 2), and the
    fit explains much of the variance; one column gives (n,)."""
    X, Y = make_regression(
        n_samples=200, n_features=5, n_targets=2, noise=0.1, random_state=0
    )
    Y = Y / Y.std(axis=0)
    params = _fast(
        hidden_layer_sizes=(16,), max_iter=40, learning_rate_init=0.02
    )
    estimator = FARegressor(**params).fit(X, Y)
    assert estimator.n_outputs_ == 2
    assert estimator.out_activation_ == "identity"
    assert estimator.predict(X).shape == (200, 2)
    assert estimator.coefs_[-1].shape == (16, 2)
    assert estimator.score(X, Y) > 0.8
    single = FARegressor(**_fast()).fit(X, Y[:, 0])
    assert single.predict(X).shape == (200,)


# ----------------------------------------------------------------------
# 9. A light import


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_import_does_not_load_tensorflow(backend):
    """On jax and torch, importing keras_fa (and fitting, predicting and
    pickling an estimator) does not import tensorflow."""
    code = (
        "import sys, pickle, warnings\n"
        "import numpy as np\n"
        "import keras_fa\n"
        "from keras_fa import FAClassifier\n"
        "import keras\n"
        "print(keras.backend.backend())\n"
        "print('tensorflow' in sys.modules)\n"
        "warnings.simplefilter('ignore')\n"
        "X = np.random.RandomState(0).rand(20, 3)\n"
        "y = np.arange(20) % 2\n"
        "c = FAClassifier((4,), max_iter=2).fit(X, y)\n"
        "pickle.loads(pickle.dumps(c)).predict(X)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [backend, "False", "False"], result.stdout
