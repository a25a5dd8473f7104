"""The estimators' parameters and the errors a fit raises: scikit-learn's
MLP parameters plus `feedback`, bad parameters refused at fit (not at
construction), rule names in any case, misuse of partial_fit and
warm_start, prediction before fit or with other features, and the
warning at max_iter.
"""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.exceptions import NotFittedError
from sklearn.neural_network import MLPClassifier
from sklearn.neural_network import MLPRegressor

import keras_fa
from keras_fa import FAClassifier
from keras_fa import FARegressor
from keras_fa.estimators import base
from tests._estimator_helpers import fast
from tests._estimator_helpers import three_classes

# Keeps the many short fits quiet (test_max_iter_warns checks the warning).
pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning"
)

# MLPClassifier/MLPRegressor parameters the estimators do not take.
NOT_TAKEN = {
    "max_fun": "a limit of solver='lbfgs', which is refused",
    "loss": "FARegressor fits the squared error only (no 'poisson')",
}


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


# ----------------------------------------------------------------------
# Errors at fit


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
    X, y = three_classes(n=30)
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
    X, y = three_classes(n=30)
    for name in ("alpha", "learning_rate_init", "momentum", "tol"):
        estimator = estimator_class(**fast(**{name: "a"}))
        with pytest.raises(ValueError, match=f"'{name}' parameter.*range"):
            estimator.fit(X, y)


def test_rule_names_in_any_case():
    """`feedback="FA"` fits the network `feedback="fa"` fits, as the layers
    and keras_fa.models take it; get_params and clone keep the value as
    given (scikit-learn's contract), and an unknown name is refused with
    the allowed ones."""
    X, y = three_classes(n=40)
    lower = FAClassifier(**fast(feedback="fa")).fit(X, y)
    upper = FAClassifier(**fast(feedback="FA"))
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
    regressor = FARegressor(**fast(feedback="Shallow")).fit(X, y)
    assert isinstance(regressor.model_, keras_fa.DirectFeedbackModel)
    with pytest.raises(ValueError, match=r"'fa'.*\(in any case\)"):
        FAClassifier(**fast(feedback="FAA")).fit(X, y)


def test_partial_fit_errors():
    """partial_fit needs `classes` on its first call, refuses early
    stopping, other classes on a later call and labels outside them."""
    X, y = three_classes(n=30)
    with pytest.raises(ValueError, match="classes must be passed on the first"):
        FAClassifier(**fast()).partial_fit(X, y)
    with pytest.raises(ValueError, match="partial_fit does not support early"):
        FAClassifier(**fast(early_stopping=True)).partial_fit(
            X, y, classes=[0, 1, 2]
        )
    with pytest.raises(ValueError, match="partial_fit does not support early"):
        FARegressor(**fast(early_stopping=True)).partial_fit(X, X[:, 0])
    estimator = FAClassifier(**fast()).partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="is not the same as on the last call"):
        estimator.partial_fit(X, y, classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="classes not in `self.classes_`"):
        estimator.partial_fit(X, y + 1)


def test_partial_fit_refuses_labels_outside_classes_before_training(
    monkeypatch,
):
    """scikit-learn's MLPClassifier refuses them ("`y` has classes not in
    `self.classes_`"); so does FAClassifier, at the first call, before it
    trains."""

    def train(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(base._FAMultilayerPerceptron, "_fit_stochastic", train)
    X = np.zeros((4, 3))
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"classes=\[0\].*'y' has \[0 1\]"):
        keras_fa.FAClassifier().partial_fit(X, y, classes=[0])
    with pytest.raises(ValueError, match="not in"):
        MLPClassifier().partial_fit(X, y, classes=[0])


def test_warm_start_with_other_classes_raises():
    """A warm-started fit refuses labels other than the first fit's."""
    X, y = three_classes(n=30)
    estimator = FAClassifier(**fast(warm_start=True)).fit(X, y)
    with pytest.raises(ValueError, match="warm_start can only be used"):
        estimator.fit(X[y < 2], y[y < 2])


@pytest.mark.parametrize("estimator_class", [FAClassifier, FARegressor])
def test_predict_before_fit_raises_not_fitted(estimator_class):
    """Every prediction method of an unfitted estimator raises
    scikit-learn's NotFittedError."""
    X, _ = three_classes(n=10)
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
    X, y = three_classes(n=30)
    estimator = estimator_class(**fast(max_iter=1)).fit(X, y)
    with pytest.raises(
        ValueError, match="X has 5 features, but .* is expecting 8"
    ):
        estimator.predict(X[:, :5])


def test_max_iter_warns():
    """Stopping at max_iter before convergence warns, as MLPClassifier."""
    X, y = three_classes(n=30)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(2\)"):
        FAClassifier(**fast(max_iter=2)).fit(X, y)
