"""What a fitted estimator holds and predicts: the fitted attributes
(shaped as MLPClassifier's), predictions independent of the call, feature
names of data frames, the alignment curve, binary, multilabel and
multi-output targets.
"""

import numpy as np
import pytest
import scipy.sparse
import scipy.special
from sklearn.datasets import make_classification
from sklearn.datasets import make_multilabel_classification
from sklearn.datasets import make_regression
from sklearn.neural_network import MLPClassifier

from keras_fa import FAClassifier
from keras_fa import FARegressor
from tests._estimator_helpers import digits
from tests._estimator_helpers import fast
from tests._estimator_helpers import three_classes

# Keeps the many short fits quiet (test_max_iter_warns checks the warning).
pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning"
)


def test_fitted_attributes_string_labels():
    """String labels: classes_ sorted, predictions among them and the
    argmax of predict_proba; n_features_in_, n_iter_, loss_curve_, t_;
    coefs_, intercepts_ and n_layers_ shaped as MLPClassifier's."""
    X, y = three_classes(n=90)
    labels = np.array(["emu", "cat", "dog"])[y]
    estimator = FAClassifier(
        **fast(hidden_layer_sizes=(7, 5), max_iter=4, learning_rate_init=0.01)
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
    X, y = three_classes(n=60)
    estimator = FAClassifier(
        **fast(
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
    X, y = three_classes(n=2500)
    estimator = FAClassifier(**fast(max_iter=1)).fit(X[:200], y[:200])
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
    X, y = three_classes(n=40)
    names = [f"f{i}" for i in range(8)]
    frame = _frame(library, X, names)
    estimator = FAClassifier(**fast(max_iter=1)).fit(frame, y)
    np.testing.assert_array_equal(estimator.feature_names_in_, names)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        from_array = estimator.predict(X)
    np.testing.assert_array_equal(estimator.predict(frame), from_array)
    renamed = _frame(library, X, [f"g{i}" for i in range(8)])
    with pytest.raises(ValueError, match="feature names should match"):
        estimator.predict(renamed)


# ----------------------------------------------------------------------
# The alignment curve


def test_alignment_curve_records():
    """alignment_curve_ has "epoch" (0 before training, every
    alignment_every epochs, and the last epoch) and one equally long list
    per layer and measure."""
    X, y = three_classes(n=60)
    estimator = FAClassifier(
        **fast(hidden_layer_sizes=(8, 6), max_iter=5, alignment_every=2)
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

    silent = FAClassifier(**fast(max_iter=2)).fit(X, y)
    assert silent.alignment_curve_ == {}


@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_alignment_of_bp_and_fa(rule):
    """Under bp the hidden layers' updates are backprop's (angle < 0.01
    degree) at every measurement; under fa the first hidden layer's update
    is far from it before training (> 30 degrees)."""
    X, y = digits(200)
    estimator = FAClassifier(
        **fast(hidden_layer_sizes=(16, 8), feedback=rule, alignment_every=1)
    ).fit(X, y)
    curve = estimator.alignment_curve_
    assert curve["epoch"] == [0, 1, 2, 3]
    if rule == "bp":
        for key in ("hidden_1/update_angle", "hidden_2/update_angle"):
            assert max(curve[key]) < 0.01, (key, curve[key])
    else:
        assert curve["hidden_1/update_angle"][0] > 30.0


# ----------------------------------------------------------------------
# Targets


def test_binary_classification():
    """Two classes: one logistic output; decision_function is (n,) and
    positive for classes_[1]; predict_proba is (n, 2), rows summing to 1,
    its second column the logistic of the decision."""
    X, y = make_classification(n_samples=80, n_features=6, random_state=2)
    labels = np.array(["no", "yes"])[y]
    estimator = FAClassifier(**fast(max_iter=5, learning_rate_init=0.01)).fit(
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
    estimator = FAClassifier(**fast(max_iter=5, learning_rate_init=0.01)).fit(
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
    params = fast(
        hidden_layer_sizes=(16,), max_iter=40, learning_rate_init=0.02
    )
    estimator = FARegressor(**params).fit(X, Y)
    assert estimator.n_outputs_ == 2
    assert estimator.out_activation_ == "identity"
    assert estimator.predict(X).shape == (200, 2)
    assert estimator.coefs_[-1].shape == (16, 2)
    assert estimator.score(X, Y) > 0.8
    single = FARegressor(**fast()).fit(X, Y[:, 0])
    assert single.predict(X).shape == (200,)
