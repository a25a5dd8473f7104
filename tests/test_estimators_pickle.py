"""Pickling (and deepcopy) of fitted estimators: forward and feedback
weights, optimizer slots and random states travel, checked by continuing
the training of both copies, and the alignment curve continues.
"""

import copy
import pickle

import numpy as np
import pytest

from keras_fa import FAClassifier
from tests._estimator_helpers import assert_same_state
from tests._estimator_helpers import differs
from tests._estimator_helpers import fast
from tests._estimator_helpers import three_classes

# Keeps the many short fits quiet (test_max_iter_warns checks the warning).
pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning"
)

# Rules whose pickling is checked: fixed feedback, trained feedback (kp),
# feedback drawn anew at every step from a random state (brsf), and the two
# direct rules (one feedback matrix per hidden layer).
PICKLED_RULES = ("fa", "kp", "brsf", "dfa", "drtp")


@pytest.mark.parametrize("rule", PICKLED_RULES)
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_round_trip_and_continued_training(rule, how):
    """A fitted estimator survives pickling (and deepcopy) exactly: same
    predictions, every model variable (feedback weights and random states
    included) and optimizer variable equal; and one more partial_fit on the
    original and on the copy gives identical weights, so the optimizer
    slots and random states travelled."""
    X, y = three_classes(n=80)
    estimator = FAClassifier(
        **fast(
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
    assert_same_state(twin, estimator)
    assert twin.loss_curve_ == estimator.loss_curve_

    before = copy.deepcopy(estimator)
    X_more, y_more = three_classes(n=80, seed=5)
    estimator.partial_fit(X_more, y_more)
    twin.partial_fit(X_more, y_more)
    assert differs(estimator, before)
    assert_same_state(twin, estimator)
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
    X, y = three_classes(n=80)
    estimator = FAClassifier(
        **fast(feedback=rule, max_iter=2, alignment_every=1)
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
