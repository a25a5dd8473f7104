"""`FAClassifier`: scikit-learn's `MLPClassifier`, trained by a feedback
rule."""

import numpy as np
import scipy.special
from sklearn.base import ClassifierMixin
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import column_or_1d
from sklearn.utils.validation import validate_data

from keras_fa.estimators.base import _FAMultilayerPerceptron
from keras_fa.estimators.base import dense_float32


class FAClassifier(ClassifierMixin, _FAMultilayerPerceptron):
    """Multi-layer perceptron classifier trained by a feedback rule.

    A drop-in for scikit-learn's `MLPClassifier` (stochastic solvers): the
    same parameters, network, log loss, L2 penalty, optimizers, stopping
    rules and fitted attributes, plus `feedback=`, the rule that sends the
    error backwards. Binary and multilabel targets get logistic outputs,
    multiclass targets a softmax.

    Args:
        hidden_layer_sizes: units of each hidden layer, e.g. `(100,)`.
        activation: hidden activation: `"identity"`, `"logistic"`, `"tanh"`
            or `"relu"`.
        feedback: the learning rule: a name from
            `keras_fa.feedback.names()` (`"bp"`, `"fa"`, `"usf"`, `"brsf"`,
            `"frsf"`, `"kp"`, `"wm"`, `"dfa"`, `"drtp"`, `"shallow"`, in any
            case: `"FA"` is `"fa"`) or a `keras_fa.feedback.FeedbackRule`
            instance. `get_params` returns it as given.
        solver: `"adam"` or `"sgd"` (`"lbfgs"` needs the loss's gradient,
            which feedback rules do not follow, and is refused at fit).
        alpha: strength of the L2 penalty on the kernels.
        batch_size: minibatch size; `"auto"` is `min(200, n_samples)`.
        learning_rate: schedule of `"sgd"`: `"constant"`, `"invscaling"`
            (`learning_rate_init / t^power_t`, t the examples seen) or
            `"adaptive"` (divided by 5 when `n_iter_no_change` epochs bring
            no improvement larger than `tol`).
        learning_rate_init: initial step size.
        power_t: exponent of `"invscaling"`.
        max_iter: maximum number of epochs.
        shuffle: whether to shuffle the examples at every epoch.
        random_state: seed of the weights, feedback matrices, shuffling and
            validation split (an int gives identical fits on a backend).
        tol: minimum improvement of the loss (or validation score) that
            counts, for stopping.
        verbose: whether to print the loss of every epoch.
        warm_start: whether `fit` continues from the last fit's weights.
        momentum: momentum of `"sgd"`.
        nesterovs_momentum: whether `"sgd"` uses Nesterov's momentum.
        early_stopping: whether to hold out `validation_fraction` of the
            data and stop when its score stops improving (the best weights
            are kept).
        validation_fraction: fraction held out for early stopping.
        beta_1: Adam's first-moment decay.
        beta_2: Adam's second-moment decay.
        epsilon: Adam's epsilon.
        n_iter_no_change: epochs without improvement before stopping.
        alignment_every: measure the alignment with backprop every this
            many epochs, and after the last (0: never), on a probe batch of
            the training data. A measurement costs about two steps.

    Attributes:
        classes_: the class labels.
        n_features_in_: number of features seen at fit.
        feature_names_in_: feature names, when `X` is a DataFrame with
            string column names.
        loss_curve_: the training loss (penalty included) of every epoch.
        loss_: the last epoch's loss.
        best_loss_: the lowest training loss (None with early stopping).
        validation_scores_: accuracy on the held-out set at every epoch
            (early stopping only).
        best_validation_score_: the best of them.
        n_iter_: number of epochs run.
        t_: number of training examples seen.
        alignment_curve_: dict of lists, one value per measurement:
            `"epoch"` (0 is before training) and
            `"<layer>/<measure>"` for layers `hidden_1`, ..., `output` and
            the measures of `keras_fa.alignment` (`update_angle`,
            `signal_angle`, `weight_angle`, `norm_ratio`, conservation).
        coefs_: forward kernels (numpy), input layer first.
        intercepts_: biases (numpy).
        n_layers_: layers, input and output included.
        n_outputs_: output units.
        out_activation_: `"softmax"` or `"logistic"`.
        model_: the trained Keras model.

    Example:

    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = keras_fa.FAClassifier((64,), feedback="fa", random_state=0)
    >>> clf.fit(X / 16, y).score(X / 16, y)
    """

    def _validate_input(self, X, y, incremental, reset, classes=None):
        X, y = validate_data(
            self,
            X,
            y,
            accept_sparse=["csr", "csc"],
            multi_output=True,
            dtype=(np.float64, np.float32),
            reset=reset,
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if reset:
            if classes is not None:
                # As scikit-learn's MLPClassifier.partial_fit, whose later
                # check this is, made at the first call, before training.
                new = unique_labels(y)
                missing = np.setdiff1d(new, np.asarray(classes))
                if len(missing):
                    raise ValueError(
                        f"`y` has classes not in `classes`: {missing}. "
                        f"Received: classes={classes!r}; 'y' has {new}."
                    )
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y if classes is None else classes)
            self.classes_ = self._label_binarizer.classes_
            kind = self._label_binarizer.y_type_
            self.out_activation_ = (
                "softmax" if kind == "multiclass" else ("logistic")
            )
        else:
            new = unique_labels(y)
            if self.warm_start and not incremental:
                if set(new) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same "
                        "classes as in the previous call to fit. Previously "
                        f"got {self.classes_}, `y` has {new}"
                    )
            elif len(np.setdiff1d(new, self.classes_, assume_unique=True)):
                raise ValueError(
                    "`y` has classes not in `self.classes_`. "
                    f"`self.classes_` has {self.classes_}. 'y' has {new}."
                )
        Y = self._label_binarizer.transform(y).astype(np.float32)
        if reset:
            self.n_outputs_ = Y.shape[1]
        return dense_float32(X), Y

    def _decode(self, Y):
        return self._label_binarizer.inverse_transform(Y)

    def fit(self, X, y, sample_weight=None):
        """Fits the network to `X` and the labels `y`.

        Args:
            X: array-like or sparse matrix, `(n_samples, n_features)`.
            y: labels `(n_samples,)`, or a label indicator matrix
                `(n_samples, n_classes)` for multilabel classification.
            sample_weight: optional weights `(n_samples,)`.

        Returns:
            self.
        """
        return self._fit(X, y, sample_weight=sample_weight)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Runs one epoch on `X`, `y`, continuing from the current weights.

        Args:
            X: array-like or sparse matrix, `(n_samples, n_features)`.
            y: labels.
            sample_weight: optional weights `(n_samples,)`.
            classes: every class, required at the first call.

        Returns:
            self.
        """
        if not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError(
                    "classes must be passed on the first call to partial_fit."
                )
        elif classes is not None and not np.array_equal(
            np.asarray(classes), self.classes_
        ):
            raise ValueError(
                f"`classes={classes!r}` is not the same as on the last call "
                f"to partial_fit, was: {self.classes_!r}"
            )
        return self._fit(
            X, y, sample_weight=sample_weight, incremental=True, classes=classes
        )

    def decision_function(self, X):
        """Returns the output layer's logits: `(n_samples,)` for two
        classes (positive for `classes_[1]`), else `(n_samples, n_classes)`.
        """
        logits = self._outputs(X)
        return logits.ravel() if self.n_outputs_ == 1 else logits

    def predict_proba(self, X):
        """Returns the class probabilities, `(n_samples, n_classes)`, in the
        order of `classes_`."""
        logits = self._outputs(X)
        if self.out_activation_ == "softmax":
            return scipy.special.softmax(logits, axis=1)
        proba = scipy.special.expit(logits)
        if self.n_outputs_ == 1 and self._label_binarizer.y_type_ != (
            "multilabel-indicator"
        ):
            proba = proba.ravel()
            return np.vstack([1 - proba, proba]).T
        return proba

    def predict_log_proba(self, X):
        """Returns the log of `predict_proba(X)`."""
        logits = self._outputs(X)
        if self.out_activation_ == "softmax":
            return scipy.special.log_softmax(logits, axis=1)
        return np.log(self.predict_proba(X))

    def _predictions(self, logits):
        if self.out_activation_ == "softmax":
            scores = logits
        else:
            scores = scipy.special.expit(logits)
            if self.n_outputs_ == 1:
                scores = scores.ravel()
        return self._label_binarizer.inverse_transform(scores)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags
