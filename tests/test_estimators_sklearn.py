"""FAClassifier and FARegressor in scikit-learn's tools: pipelines, grid
search and cross-validation, cloning, get_params and set_params.

Fits are small (a few epochs on a few hundred examples) and do not measure
the alignment (`alignment_every=0`), which has its own tests.
"""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

import keras_fa
from keras_fa import FAClassifier
from keras_fa import FARegressor
from tests._estimator_helpers import digits
from tests._estimator_helpers import fast
from tests._estimator_helpers import learns
from tests._estimator_helpers import three_classes

# Keeps the many short fits quiet (test_max_iter_warns checks the warning).
pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning"
)


# ----------------------------------------------------------------------
# 1. Pipelines, grid search, cross-validation


def test_pipeline_fit_and_score():
    """A StandardScaler -> FAClassifier pipeline learns digits: held-out
    accuracy far above chance (0.1), and `score` is the accuracy of
    `predict`."""
    X, y = digits(400)
    X_test, y_test = digits(300, start=400)
    pipeline = make_pipeline(
        StandardScaler(),
        FAClassifier(**learns()),
    ).fit(X, y)
    score = pipeline.score(X_test, y_test)
    assert score == np.mean(pipeline.predict(X_test) == y_test)
    assert score > 0.6
    assert pipeline[-1].n_features_in_ == 64


def test_grid_search_over_rules_and_sizes():
    """GridSearchCV tries every (feedback, hidden_layer_sizes) pair, picks
    the best by its mean score, and refits it; the rule reaches the
    estimator (bp and fa score differently on the same split)."""
    X, y = digits(200)
    grid = {"feedback": ["bp", "fa"], "hidden_layer_sizes": [(8,), (16,)]}
    search = GridSearchCV(
        FAClassifier(**fast(learning_rate_init=0.01)),
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
    X, y = digits(300)
    scores = cross_val_score(FAClassifier(**learns()), X, y, cv=3)
    assert scores.shape == (3,)
    assert np.all(scores > 0.6)
    assert len(set(scores)) > 1


# ----------------------------------------------------------------------
# 2. clone, get_params, set_params


def test_clone_is_unfitted_with_identical_params():
    """clone of a fitted estimator whose rule is a FeedbackRule object is
    unfitted, has identical parameters (the rule a copy with the same
    config), and refits to exactly the same predictions."""
    X, y = three_classes()
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
