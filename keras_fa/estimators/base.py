"""The scikit-learn glue shared by `FAClassifier` and `FARegressor`:
parameters, the fitting loop, stopping rules, prediction and pickling.

A fit builds the network of `keras_fa.estimators.network` and runs its
epochs with an `engine.Trainer`, one compiled call per epoch.
"""

import collections
import warnings

import numpy as np
import scipy.sparse
from keras import ops
from sklearn.base import BaseEstimator
from sklearn.base import is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight
from sklearn.utils.validation import check_is_fitted
from sklearn.utils.validation import validate_data

from keras_fa import engine
from keras_fa.estimators import network
from keras_fa.estimators import params

# Seeds of the Keras model, drawn from `random_state`.
_MAX_SEED = 2**20
# Training data on the device is padded to a multiple of this many rows, so
# that fits on data of similar size (cross-validation folds) share shapes.
_ROWS = 256

# The training data of one fit: `x`, `y` on the device, padded with zero
# rows from row `n` on (the padding of the last batch).
_Data = collections.namedtuple("_Data", "x y n sample_weight batch_size")


class _FAMultilayerPerceptron(BaseEstimator):
    """Base of `FAClassifier` and `FARegressor`: parameters, fitting loop,
    pickling."""

    _parameter_constraints: dict = params.CONSTRAINTS

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        feedback="fa",
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        alignment_every=10,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.feedback = feedback
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.alignment_every = alignment_every

    # ------------------------------------------------------------------
    # Parameters

    def _check_params(self):
        # scikit-learn's check of `_parameter_constraints`: private to
        # BaseEstimator, and how scikit-learn's own estimators check theirs.
        self._validate_params()
        if self.solver == "lbfgs":
            raise ValueError(
                "solver='lbfgs' is not available in keras_fa: L-BFGS's line "
                "search needs the gradient of the loss, which feedback rules "
                "other than backprop do not follow. Use solver='sgd' or "
                "solver='adam'."
            )
        return params.hidden_sizes(self.hidden_layer_sizes)

    # ------------------------------------------------------------------
    # The network

    def _build(self, n_features, hidden, random_state):
        """Builds and compiles the network and its trainer."""
        feedback = self.feedback
        spec = {
            "n_features": n_features,
            "n_outputs": self.n_outputs_,
            "out_activation": self.out_activation_,
            "hidden": tuple(hidden),
            "activation": network.ACTIVATIONS[self.activation],
            # Rule names in lower case, as the layers take them.
            "feedback": feedback.lower()
            if isinstance(feedback, str)
            else feedback,
            "seed": int(random_state.randint(_MAX_SEED)),
            "solver": self.solver,
            "optimizer": self._optimizer_config(),
            "alpha": float(self.alpha),
        }
        self._spec = spec
        self._make_model(spec)
        self._alignment_reference = None

    def _optimizer_config(self):
        if self.solver == "sgd":
            return {
                "learning_rate": float(self.learning_rate_init),
                "momentum": float(self.momentum),
                "nesterov": bool(self.nesterovs_momentum),
            }
        return {
            "learning_rate": float(self.learning_rate_init),
            "beta_1": float(self.beta_1),
            "beta_2": float(self.beta_2),
            "epsilon": float(self.epsilon),
        }

    def _make_model(self, spec):
        self.model_ = network.build(spec)
        self._trainer = network.trainer(self.model_, spec)
        self._meter = network.meter(self.model_, spec)
        self._layer_keys = network.layer_keys(self._meter.layer_names)

    # ------------------------------------------------------------------
    # Fitting

    def _fit(self, X, y, sample_weight=None, incremental=False, classes=None):
        hidden = self._check_params()
        first_pass = not hasattr(self, "model_") or (
            not self.warm_start and not incremental
        )
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        X, Y = self._validate_input(X, y, incremental, first_pass, classes)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(
                sample_weight, X, dtype=np.float64
            )
        random_state = check_random_state(self.random_state)
        if first_pass:
            self._build(X.shape[1], hidden, random_state)
            self._start_records()
        elif not incremental:
            # warm_start: the next fit starts from the last one's weights,
            # with a fresh optimizer (as scikit-learn's does).
            self._reset_optimizer()
        self._fit_stochastic(X, Y, sample_weight, random_state, incremental)
        self._check_finite()
        return self

    def _check_finite(self):
        if not all(
            np.all(np.isfinite(value))
            for value in _numpy(self.model_.trainable_variables)
        ):
            raise ValueError(
                "Solver produced non-finite parameter weights. The input "
                "data may contain large values and need to be preprocessed, "
                f"or the rule {self.feedback!r} diverged at "
                f"learning_rate_init={self.learning_rate_init}."
            )

    def _start_records(self):
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = np.inf
        self.alignment_curve_ = {}
        self._learning_rate = float(self.learning_rate_init)

    def _fit_stochastic(self, X, Y, sample_weight, random_state, incremental):
        """Runs the epochs of a fit (one, for `partial_fit`)."""
        self.n_iter_ = 0
        best = validation = None
        if self.early_stopping:
            X, Y, sample_weight, validation = self._split_validation(
                X, Y, sample_weight, random_state
            )
        data = self._device_data(X, Y, sample_weight)
        probe = self._start_alignment(X, Y, data.batch_size, random_state)
        for _ in range(self.max_iter):
            self._run_epoch(data, random_state, probe)
            if self._improved(validation):
                best = _numpy(self.model_.variables)
            self._schedule_learning_rate()
            if self._stalled() or incremental:
                break
            if self.n_iter_ == self.max_iter:
                warnings.warn(
                    "Stochastic Optimizer: Maximum iterations "
                    f"({self.max_iter}) reached and the optimization hasn't "
                    "converged yet.",
                    ConvergenceWarning,
                    stacklevel=4,
                )
        epochs = self.alignment_curve_.get("epoch", [])
        if not incremental and epochs and epochs[-1] != len(self.loss_curve_):
            self._record_alignment(probe)
        if best is not None:
            engine.assign(self.model_.variables, best)

    def _device_data(self, X, Y, sample_weight):
        """The training data on the device, and the batch size."""
        n = X.shape[0]
        # Row n on is zeros: the padding of the last batch.
        rows = (n // _ROWS + 1) * _ROWS
        return _Data(
            x=ops.convert_to_tensor(_pad_rows(X, rows)),
            y=ops.convert_to_tensor(_pad_rows(Y, rows)),
            n=n,
            sample_weight=sample_weight,
            batch_size=self._batch_size(n),
        )

    def _run_epoch(self, data, random_state, probe):
        """Trains one epoch; records its loss, and the alignment when due."""
        n = data.n
        order = random_state.permutation(n) if self.shuffle else np.arange(n)
        batches = engine.minibatches(
            order, data.sample_weight, data.batch_size, pad_row=n
        )
        total = self._trainer.epoch(data.x, data.y, *batches)
        self.n_iter_ += 1
        self.t_ += n
        self.loss_ = total / n
        self.loss_curve_.append(self.loss_)
        if self.verbose:
            print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
        every = self.alignment_every
        if every and len(self.loss_curve_) % every == 0:
            self._record_alignment(probe)

    def _split_validation(self, X, Y, sample_weight, random_state):
        """Holds out `validation_fraction` for early stopping; returns the
        training arrays and `(X_val, y_val, sample_weight_val)`."""
        # Stratified for single-output classification, as scikit-learn.
        stratify = (
            self._decode(Y)
            if is_classifier(self)
            and self._label_binarizer.y_type_ != "multilabel-indicator"
            else None
        )
        arrays = [X, Y] + ([] if sample_weight is None else [sample_weight])
        split = train_test_split(
            *arrays,
            random_state=random_state,
            test_size=self.validation_fraction,
            stratify=stratify,
        )
        X, X_val = split[0], split[1]
        Y, Y_val = split[2], split[3]
        sample_weight, sw_val = (
            (split[4], split[5]) if sample_weight is not None else (None, None)
        )
        if X_val.shape[0] < 2:
            raise ValueError(
                "The validation set is too small. Increase "
                "'validation_fraction' or the size of your dataset."
            )
        y_val = self._decode(Y_val)
        return X, Y, sample_weight, (X_val, y_val, sw_val)

    def _batch_size(self, n):
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn(
                "Got `batch_size` less than 1 or larger than sample size. "
                "It is going to be clipped",
                stacklevel=6,
            )
        return int(np.clip(self.batch_size, 1, n))

    # ------------------------------------------------------------------
    # Stopping rules and learning-rate schedules

    def _improved(self, validation):
        """Counts an epoch without improvement of the validation score (with
        early stopping) or of the training loss by `tol`; returns whether
        the validation score is the best yet (its weights are kept)."""
        if validation is None:
            if self.loss_ > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            self.best_loss_ = min(self.best_loss_, self.loss_)
            return False
        score = self._score_arrays(*validation)
        self.validation_scores_.append(score)
        if self.verbose:
            print(f"Validation score: {score:f}")
        if score < self.best_validation_score_ + self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        if score > self.best_validation_score_:
            self.best_validation_score_ = score
            return True
        return False

    def _stalled(self):
        """Whether training stops: more than `n_iter_no_change` epochs
        without improvement, and no smaller learning rate left to try."""
        if self._no_improvement_count <= self.n_iter_no_change:
            return False
        if self._reduce_learning_rate():
            self._no_improvement_count = 0
            return False
        if self.verbose:
            what = (
                "Validation score" if self.early_stopping else "Training loss"
            )
            print(
                f"{what} did not improve more than tol={self.tol:f} for "
                f"{self.n_iter_no_change} consecutive epochs. Stopping."
            )
        return True

    def _schedule_learning_rate(self):
        # scikit-learn's invscaling: init / (t + 1)^power_t, t the examples.
        if self.solver == "sgd" and self.learning_rate == "invscaling":
            self._set_learning_rate(
                float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t
            )

    def _reset_optimizer(self):
        variables = self.model_.optimizer.variables
        engine.assign(
            variables, [ops.zeros(v.shape, v.dtype) for v in variables]
        )
        self._set_learning_rate(float(self.learning_rate_init))

    def _reduce_learning_rate(self):
        # scikit-learn's adaptive schedule: divide by 5 until 1e-6, then stop.
        if self.solver != "sgd" or self.learning_rate != "adaptive":
            return False
        if self._learning_rate <= 1e-6:
            return False
        self._set_learning_rate(self._learning_rate / 5.0)
        if self.verbose:
            print(f"Setting learning rate to {self._learning_rate:f}")
        return True

    def _set_learning_rate(self, value):
        self._learning_rate = value
        self.model_.optimizer.learning_rate = value

    # ------------------------------------------------------------------
    # Alignment

    def _start_alignment(self, X, Y, batch_size, random_state):
        """Returns the probe batch of the alignment measurements; a new fit
        first takes the reference of the conservation law and measures."""
        probe = random_state.permutation(X.shape[0])[:batch_size]
        probe = (X[probe], Y[probe])
        if self._alignment_reference is None:
            # Q(0), by layer position: names change when a model is rebuilt.
            self._alignment_reference = {
                self._layer_keys[name]: q
                for name, q in self._meter.reset_reference().items()
            }
        if self.alignment_every and not self.alignment_curve_:
            self._record_alignment(probe)
        return probe

    def _record_alignment(self, probe):
        values = self._meter.measure(*probe)
        curve = self.alignment_curve_
        row = {"epoch": len(self.loss_curve_)}
        for key, value in values.items():
            layer, measure = key.rsplit("/", 1)
            row[f"{self._layer_keys.get(layer, layer)}/{measure}"] = value
        length = len(curve.get("epoch", ()))
        for key in [*row, *(k for k in curve if k not in row)]:
            column = curve.setdefault(key, [np.nan] * length)
            column.append(row.get(key, np.nan))

    # ------------------------------------------------------------------
    # Prediction

    def _outputs(self, X):
        check_is_fitted(self)
        X = validate_data(
            self,
            X,
            accept_sparse=["csr", "csc"],
            dtype=(np.float64, np.float32),
            reset=False,
        )
        return self._trainer.predict(dense_float32(X))

    def _score_arrays(self, X, y, sample_weight):
        # The validation score of early stopping, on validated arrays.
        metric = accuracy_score if is_classifier(self) else r2_score
        predicted = self._predictions(self._trainer.predict(X))
        return metric(y, predicted, sample_weight=sample_weight)

    def predict(self, X):
        """Returns the predictions for `X`."""
        return self._predictions(self._outputs(X))

    @property
    def coefs_(self):
        """The forward kernels, input layer first (numpy), as in
        scikit-learn's `MLPClassifier.coefs_`."""
        layers = network.kernel_layers(self.model_)
        return [ops.convert_to_numpy(layer.kernel) for layer in layers]

    @property
    def intercepts_(self):
        """The biases, input layer first (numpy)."""
        layers = network.kernel_layers(self.model_)
        return [ops.convert_to_numpy(layer.bias) for layer in layers]

    @property
    def n_layers_(self):
        """Number of layers, input and output included."""
        return len(self._spec["hidden"]) + 2

    # ------------------------------------------------------------------
    # Pickling: the Keras model travels as its variables' values (forward
    # and feedback weights, random states, optimizer slots) and is rebuilt
    # from the same specification on load.

    def __getstate__(self):
        state = dict(super().__getstate__())
        for key in ("model_", "_trainer", "_meter", "_layer_keys"):
            state.pop(key, None)
        if hasattr(self, "model_"):
            state["_variables"] = _numpy(self.model_.variables)
            state["_optimizer_variables"] = _numpy(
                self.model_.optimizer.variables
            )
        return state

    def __setstate__(self, state):
        variables = state.pop("_variables", None)
        optimizer_variables = state.pop("_optimizer_variables", None)
        super().__setstate__(state)
        if variables is None:
            return
        self._make_model(self._spec)
        engine.assign(self.model_.variables, variables)
        engine.assign(self.model_.optimizer.variables, optimizer_variables)
        if self._alignment_reference is not None:
            names = {key: name for name, key in self._layer_keys.items()}
            self._meter.reference = {
                names[key]: q for key, q in self._alignment_reference.items()
            }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


def _numpy(variables):
    """The values of `variables`, as numpy arrays."""
    return [ops.convert_to_numpy(v.value) for v in variables]


def _pad_rows(a, rows):
    return np.concatenate(
        [a, np.zeros((rows - a.shape[0], a.shape[1]), a.dtype)]
    )


def dense_float32(X):
    """Returns `X` (dense or sparse) as a contiguous float32 numpy array."""
    if scipy.sparse.issparse(X):
        X = X.toarray()
    return np.ascontiguousarray(X, dtype=np.float32)
