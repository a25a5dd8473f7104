"""`FARegressor`: scikit-learn's `MLPRegressor`, trained by a feedback
rule."""

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.utils.validation import column_or_1d
from sklearn.utils.validation import validate_data

from keras_fa.estimators.base import _FAMultilayerPerceptron
from keras_fa.estimators.base import dense_float32


class FARegressor(RegressorMixin, _FAMultilayerPerceptron):
    """Multi-layer perceptron regressor trained by a feedback rule.

    A drop-in for scikit-learn's `MLPRegressor` (squared error, stochastic
    solvers), with `feedback=` choosing the rule that sends the error
    backwards. It takes the parameters of `FAClassifier` and has its
    attributes, without `classes_`; `validation_scores_` hold R^2 scores.
    Multi-output targets `(n_samples, n_outputs)` are supported; the loss is
    half the squared error summed over the outputs (the steps
    `MLPRegressor` takes; its `loss_curve_` divides by the outputs).

    Example:

    >>> reg = keras_fa.FARegressor((64,), feedback="usf", random_state=0)
    >>> reg.fit(X, y).predict(X)
    """

    def _validate_input(self, X, y, incremental, reset, classes=None):
        X, y = validate_data(
            self,
            X,
            y,
            accept_sparse=["csr", "csc"],
            multi_output=True,
            y_numeric=True,
            dtype=(np.float64, np.float32),
            reset=reset,
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        Y = np.asarray(y, dtype=np.float32).reshape(y.shape[0], -1)
        if reset:
            self.out_activation_ = "identity"
            self.n_outputs_ = Y.shape[1]
        elif Y.shape[1] != self.n_outputs_:
            raise ValueError(
                f"y has {Y.shape[1]} outputs, but this {type(self).__name__} "
                f"was fitted with {self.n_outputs_}."
            )
        return dense_float32(X), Y

    def _decode(self, Y):
        return Y.ravel() if Y.shape[1] == 1 else Y

    def fit(self, X, y, sample_weight=None):
        """Fits the network to `X` and the targets `y`.

        Args:
            X: array-like or sparse matrix, `(n_samples, n_features)`.
            y: targets, `(n_samples,)` or `(n_samples, n_outputs)`.
            sample_weight: optional weights `(n_samples,)`.

        Returns:
            self.
        """
        return self._fit(X, y, sample_weight=sample_weight)

    def partial_fit(self, X, y, sample_weight=None):
        """Runs one epoch on `X`, `y`, continuing from the current weights.

        Returns:
            self.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def _predictions(self, outputs):
        return outputs.ravel() if self.n_outputs_ == 1 else outputs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
