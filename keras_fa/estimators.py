"""scikit-learn estimators trained by feedback rules.

`FAClassifier` and `FARegressor` replace scikit-learn's `MLPClassifier` and
`MLPRegressor` with a one-word change: they take the same parameters (those
of the stochastic solvers), learn the same network with the same losses and
optimizers, and add `feedback=`, the rule that trains it (`"fa"` by default;
`"bp"` is backprop). Around them everything scikit-learn offers works:
pipelines, grid search, cross-validation, cloning and pickling.

Each fit builds a `keras_fa.models.dense_network` and trains it with one
compiled call per epoch (a loop over the minibatches inside jax.jit, a
tf.function, or eager torch), so an epoch costs what its steps cost. The
alignment of every layer with backprop is measured along the way
(`alignment_curve_`).
"""

import collections
import math
import numbers
import warnings

import keras
import numpy as np
import scipy.sparse
import scipy.special
from keras import ops
from sklearn.base import BaseEstimator
from sklearn.base import ClassifierMixin
from sklearn.base import RegressorMixin
from sklearn.base import is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils._param_validation import Options
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import _check_sample_weight
from sklearn.utils.validation import check_is_fitted
from sklearn.utils.validation import column_or_1d
from sklearn.utils.validation import validate_data

from keras_fa import alignment as alignment_lib
from keras_fa import backend
from keras_fa import models
from keras_fa.feedback import FeedbackRule

# scikit-learn's activation names, as Keras names them.
_ACTIVATIONS = {
    "identity": "linear",
    "logistic": "sigmoid",
    "tanh": "tanh",
    "relu": "relu",
}
# Examples per compiled forward call: one shape, so one compilation, and
# every example's prediction independent of the others in its call.
_PREDICT_CHUNK = 1024
# Seeds of the Keras model, drawn from `random_state`.
_MAX_SEED = 2**20
# Training data on the device is padded to a multiple of this many rows, so
# that fits on data of similar size (cross-validation folds) share shapes.
_ROWS = 256
# Compiled functions of recent networks, by structure (see `_Trainer`).
_COMPILED = collections.OrderedDict()
_COMPILED_SIZE = 8


class _RuleName(StrOptions):
    """The `feedback` constraint: a rule name of `keras_fa.models.rules()`
    (read when checked, so rules registered later count), in any case, as
    the layers and `keras_fa.models` take it."""

    def __init__(self):
        super().__init__(set(models.rules()))

    def is_satisfied_by(self, val):
        return isinstance(val, str) and val.lower() in models.rules()

    def __str__(self):
        names = ", ".join(repr(name) for name in models.rules())
        return f"a str among {{{names}}} (in any case)"


def _rule(feedback):
    """The rule an estimator builds with: names in lower case."""
    return feedback.lower() if isinstance(feedback, str) else feedback


def _binary_log_loss(y_true, logits):
    # scikit-learn's binary log loss sums over the outputs (labels).
    return ops.sum(
        ops.binary_crossentropy(y_true, logits, from_logits=True), axis=-1
    )


def _half_squared_error(y_true, y_pred):
    # Half the squared error summed over the outputs: the loss whose
    # gradient scikit-learn's MLPRegressor follows (its `loss_curve_`
    # reports the mean over the outputs instead).
    return 0.5 * ops.sum(ops.square(y_true - y_pred), axis=-1)


def _loss(out_activation):
    if out_activation == "softmax":
        return keras.losses.CategoricalCrossentropy(from_logits=True)
    if out_activation == "logistic":
        return _binary_log_loss
    return _half_squared_error


class _Trainer:
    """Trains one compiled model by minibatch epochs and predicts with it.

    One call runs a whole epoch: the minibatches are rows of an index
    matrix into the training data (held on the device), padded to equal
    size with an all-zero row of weight 0, so the loop compiles once. Each
    step's loss is the model's compiled loss with per-example weights
    `w = s * batch / sum(s)` (the weighted mean over the batch, as
    scikit-learn takes it) plus `alpha / 2 * sum |W|^2 / sum(s)` over the
    forward kernels; its gradient is the one the model's rules give.
    """

    def __init__(self, model, alpha, key=None):
        self.model = model
        self.optimizer = model.optimizer
        self.alpha = float(alpha)
        trainable = model.trainable_variables
        kernels = {id(layer.kernel) for layer in _kernel_layers(model)}
        self._kernels = [i for i, v in enumerate(trainable) if id(v) in kernels]
        self._training = (
            {"training": True} if model._call_has_training_arg else {}
        )
        # Where the compiled functions are pure (jax), networks of the same
        # structure share them: a new fit (a grid-search or cross-validation
        # candidate) then skips compilation. Their values come as arguments;
        # what the trace fixes (shapes, rules, optimizer hyperparameters
        # other than the learning rate, which is a variable) is in `key`.
        if backend.STATELESS_OPTIMIZER and key is not None:
            if key in _COMPILED:
                _COMPILED.move_to_end(key)
                self._epoch, self._forward = _COMPILED[key]
                return
        self._epoch = backend.compile_function(
            self._stateless_epoch
            if backend.STATELESS_OPTIMIZER
            else self._stateful_epoch,
            differentiable=False,
        )
        self._forward = backend.compile_function(
            self._forward_fn, differentiable=False
        )
        if backend.STATELESS_OPTIMIZER and key is not None:
            _COMPILED[key] = (self._epoch, self._forward)
            while len(_COMPILED) > _COMPILED_SIZE:
                _COMPILED.popitem(last=False)

    def _loss_fn(self, trainable, non_trainable, metrics, x, y, w, norm):
        model = self.model
        y_pred, non_trainable = model.stateless_call(
            trainable, non_trainable, x, **self._training
        )
        loss, _ = model.stateless_compute_loss(
            trainable,
            non_trainable,
            metrics,
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=w,
            training=True,
        )
        if self.alpha:
            squares = [ops.sum(ops.square(trainable[i])) for i in self._kernels]
            loss = loss + 0.5 * self.alpha * sum(squares) / norm
        return loss, non_trainable

    def _step(self, trainable, non_trainable, metrics, data, i):
        x, y, index, weight, norm, count = data
        rows = index[i]
        loss, non_trainable, grads = backend.value_and_grad(
            self._loss_fn,
            trainable,
            non_trainable,
            metrics,
            ops.take(x, rows, axis=0),
            ops.take(y, rows, axis=0),
            weight[i],
            norm[i],
        )
        return loss * count[i], non_trainable, grads

    def _stateless_epoch(self, state, metrics, data):
        def body(i, carry):
            trainable, non_trainable, optimizer, total = carry
            loss, non_trainable, grads = self._step(
                trainable, non_trainable, metrics, data, i
            )
            trainable, optimizer = self.optimizer.stateless_apply(
                optimizer, grads, trainable
            )
            return trainable, non_trainable, optimizer, total + loss

        total = ops.zeros((), dtype="float32")
        return ops.fori_loop(0, data[2].shape[0], body, (*state, total))

    def _stateful_epoch(self, metrics, data):
        model = self.model

        def body(i, total):
            loss, non_trainable, grads = self._step(
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
                metrics,
                data,
                i,
            )
            self.optimizer.apply(grads, model.trainable_variables)
            for variable, value in zip(
                model.non_trainable_variables, non_trainable
            ):
                variable.assign(value)
            return total + loss

        total = ops.zeros((), dtype="float32")
        return ops.fori_loop(0, data[2].shape[0], body, total)

    def epoch(self, x, y, index, weight, norm, count):
        """Runs one epoch over the minibatches `x[index[i]]`; returns the
        sum over batches of the batch loss times its number of examples."""
        model = self.model
        data = (x, y, index, weight, norm, count)
        data = tuple(ops.convert_to_tensor(a) for a in data)
        metrics = [v.value for v in model.metrics_variables]
        if not backend.STATELESS_OPTIMIZER:
            return float(self._epoch(metrics, data))
        groups = (
            model.trainable_variables,
            model.non_trainable_variables,
            self.optimizer.variables,
        )
        state = tuple([v.value for v in group] for group in groups)
        *state, total = self._epoch(state, metrics, data)
        for group, values in zip(groups, state):
            for variable, value in zip(group, values):
                variable.assign(value)
        return float(total)

    def _forward_fn(self, trainable, non_trainable, x):
        y_pred, _ = self.model.stateless_call(trainable, non_trainable, x)
        return y_pred

    def predict(self, x):
        """Returns the model's outputs on `x` (float64 numpy)."""
        model = self.model
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        n = x.shape[0]
        outputs = []
        for start in range(0, n, _PREDICT_CHUNK):
            chunk = x[start : start + _PREDICT_CHUNK]
            rows = chunk.shape[0]
            if rows < _PREDICT_CHUNK:
                pad = np.zeros((_PREDICT_CHUNK - rows, x.shape[1]), x.dtype)
                chunk = np.concatenate([chunk, pad])
            chunk = ops.convert_to_tensor(chunk)
            out = self._forward(trainable, non_trainable, chunk)
            outputs.append(ops.convert_to_numpy(out)[:rows])
        if not outputs:
            return np.zeros((0, model.outputs[0].shape[-1]))
        return np.concatenate(outputs).astype(np.float64)


def _batches(order, sample_weight, batch_size, pad_row):
    """Returns the index, weight, norm and count arrays of one epoch's
    minibatches of `order` (see `_Trainer`)."""
    n = order.size
    n_batches = math.ceil(n / batch_size)
    size = n_batches * batch_size
    index = np.full(size, pad_row, dtype=np.int32)
    index[:n] = order
    weight = np.zeros(size, dtype=np.float64)
    weight[:n] = 1.0 if sample_weight is None else sample_weight[order]
    index = index.reshape(n_batches, batch_size)
    weight = weight.reshape(n_batches, batch_size)
    count = np.full(n_batches, batch_size, dtype=np.float32)
    count[-1] = n - (n_batches - 1) * batch_size
    norm = weight.sum(axis=1)
    # A batch whose weights are all zero contributes nothing.
    norm[norm <= 0] = 1.0
    weight = weight * (batch_size / norm)[:, None]
    return index, weight.astype(np.float32), norm.astype(np.float32), count


class _FAMultilayerPerceptron(BaseEstimator):
    """Base of `FAClassifier` and `FARegressor`: parameters, fitting loop,
    pickling."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": [
            "array-like",
            Interval(numbers.Integral, 1, None, closed="left"),
        ],
        "activation": [StrOptions(set(_ACTIVATIONS))],
        "feedback": [_RuleName(), FeedbackRule],
        "solver": [StrOptions({"sgd", "adam", "lbfgs"})],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "batch_size": [
            StrOptions({"auto"}),
            Interval(numbers.Integral, 1, None, closed="left"),
        ],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [
            Interval(numbers.Real, 0, None, closed="neither")
        ],
        "power_t": [Interval(numbers.Real, 0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(numbers.Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_1": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_2": [Interval(numbers.Real, 0, 1, closed="left")],
        "epsilon": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_iter_no_change": [
            Interval(numbers.Integral, 1, None, closed="left"),
            Options(numbers.Real, {np.inf}),
        ],
        "alignment_every": [
            Interval(numbers.Integral, 0, None, closed="left"),
        ],
    }

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
        self._validate_params()
        if self.solver == "lbfgs":
            raise ValueError(
                "solver='lbfgs' is not available in keras_fa: L-BFGS's line "
                "search needs the gradient of the loss, which feedback rules "
                "other than backprop do not follow. Use solver='sgd' or "
                "solver='adam'."
            )
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool)
            for s in sizes
        ) or any(s <= 0 for s in sizes):
            raise ValueError(
                "hidden_layer_sizes must be positive integers, got "
                f"{self.hidden_layer_sizes!r}."
            )
        return [int(s) for s in sizes]

    # ------------------------------------------------------------------
    # Fitting

    def _build(self, n_features, hidden, random_state):
        """Builds and compiles the network and its trainer."""
        spec = {
            "n_features": n_features,
            "n_outputs": self.n_outputs_,
            "out_activation": self.out_activation_,
            "hidden": tuple(hidden),
            "activation": _ACTIVATIONS[self.activation],
            "feedback": _rule(self.feedback),
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
        model = models.dense_network(
            (spec["n_features"],),
            spec["n_outputs"],
            feedback=spec["feedback"],
            hidden=spec["hidden"],
            activation=spec["activation"],
            seed=spec["seed"],
        )
        optimizer = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}
        model.compile(
            optimizer=optimizer[spec["solver"]](**spec["optimizer"]),
            loss=_loss(spec["out_activation"]),
        )
        model.optimizer.build(model.trainable_variables)
        self.model_ = model
        key = _structure(spec)
        self._trainer = _Trainer(model, spec["alpha"], key=key)
        self._meter = alignment_lib.Alignment(model, share=key)
        self._layer_keys = _layer_keys(self._meter.layer_names)

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
        if not all(
            np.all(np.isfinite(ops.convert_to_numpy(v.value)))
            for v in self.model_.trainable_variables
        ):
            raise ValueError(
                "Solver produced non-finite parameter weights. The input "
                "data may contain large values and need to be preprocessed, "
                f"or the rule {self.feedback!r} diverged at "
                f"learning_rate_init={self.learning_rate_init}."
            )
        return self

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
        self.n_iter_ = 0
        best = validation = None
        if self.early_stopping:
            X, Y, sample_weight, validation = self._split_validation(
                X, Y, sample_weight, random_state
            )
        n = X.shape[0]
        batch_size = self._batch_size(n)
        # Row n on is zeros: the padding of the last batch.
        rows = (n // _ROWS + 1) * _ROWS
        x_device = ops.convert_to_tensor(_pad_rows(X, rows))
        y_device = ops.convert_to_tensor(_pad_rows(Y, rows))
        probe = random_state.permutation(n)[:batch_size]
        probe = (X[probe], Y[probe])
        if self._alignment_reference is None:
            # Q(0), by layer position: names change when a model is rebuilt.
            self._alignment_reference = {
                self._layer_keys[name]: q
                for name, q in self._meter.reset_reference().items()
            }
        if self.alignment_every and not self.alignment_curve_:
            self._record_alignment(probe)

        order = np.arange(n)
        for _ in range(self.max_iter):
            if self.shuffle:
                order = random_state.permutation(n)
            batches = _batches(order, sample_weight, batch_size, pad_row=n)
            total = self._trainer.epoch(x_device, y_device, *batches)
            self.n_iter_ += 1
            self.t_ += n
            self.loss_ = total / n
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
            if (
                self.alignment_every
                and len(self.loss_curve_) % self.alignment_every == 0
            ):
                self._record_alignment(probe)
            if self._improved(validation):
                best = [
                    ops.convert_to_numpy(v.value) for v in self.model_.variables
                ]
            if self.solver == "sgd" and self.learning_rate == "invscaling":
                self._set_learning_rate(
                    float(self.learning_rate_init)
                    / (self.t_ + 1) ** self.power_t
                )
            if self._no_improvement_count > self.n_iter_no_change:
                if self._reduce_learning_rate():
                    self._no_improvement_count = 0
                else:
                    if self.verbose:
                        what = (
                            "Validation score"
                            if self.early_stopping
                            else "Training loss"
                        )
                        print(
                            f"{what} did not improve more than "
                            f"tol={self.tol:f} for {self.n_iter_no_change} "
                            "consecutive epochs. Stopping."
                        )
                    break
            if incremental:
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
            for variable, value in zip(self.model_.variables, best):
                variable.assign(value)

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
                stacklevel=5,
            )
        return int(np.clip(self.batch_size, 1, n))

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

    def _reset_optimizer(self):
        optimizer = self.model_.optimizer
        for variable in optimizer.variables:
            variable.assign(ops.zeros(variable.shape, variable.dtype))
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
        return self._trainer.predict(_dense_float32(X))

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
        return [
            ops.convert_to_numpy(layer.kernel)
            for layer in _kernel_layers(self.model_)
        ]

    @property
    def intercepts_(self):
        """The biases, input layer first (numpy)."""
        return [
            ops.convert_to_numpy(layer.bias)
            for layer in _kernel_layers(self.model_)
        ]

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
            state["_variables"] = [
                ops.convert_to_numpy(v.value) for v in self.model_.variables
            ]
            state["_optimizer_variables"] = [
                ops.convert_to_numpy(v.value)
                for v in self.model_.optimizer.variables
            ]
        return state

    def __setstate__(self, state):
        variables = state.pop("_variables", None)
        optimizer_variables = state.pop("_optimizer_variables", None)
        super().__setstate__(state)
        if variables is None:
            return
        self._make_model(self._spec)
        for variable, value in zip(self.model_.variables, variables):
            variable.assign(value)
        for variable, value in zip(
            self.model_.optimizer.variables, optimizer_variables
        ):
            variable.assign(value)
        if self._alignment_reference is not None:
            names = {key: name for name, key in self._layer_keys.items()}
            self._meter.reference = {
                names[key]: q for key, q in self._alignment_reference.items()
            }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


def _kernel_layers(model):
    """The model's layers with a forward kernel, in order."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if getattr(layer, "kernel", None) is not None
    ]


def _structure(spec):
    """What fixes a network's compiled functions: its spec without the
    seed (weights) and the learning rate (a variable)."""
    optimizer = {
        k: v for k, v in spec["optimizer"].items() if k != "learning_rate"
    }
    rest = {k: v for k, v in spec.items() if k not in ("seed", "optimizer")}
    return (tuple(sorted(rest.items())), tuple(sorted(optimizer.items())))


def _layer_keys(layer_names):
    """Maps the model's kernel layers to `hidden_1`, ..., `output`."""
    keys = {}
    for i, name in enumerate(layer_names):
        last = i == len(layer_names) - 1
        keys[name] = "output" if last else f"hidden_{i + 1}"
    return keys


def _pad_rows(a, rows):
    return np.concatenate(
        [a, np.zeros((rows - a.shape[0], a.shape[1]), a.dtype)]
    )


def _dense_float32(X):
    if scipy.sparse.issparse(X):
        X = X.toarray()
    return np.ascontiguousarray(X, dtype=np.float32)


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
            `keras_fa.models.rules()` (`"bp"`, `"fa"`, `"usf"`, `"brsf"`,
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
        return _dense_float32(X), Y

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
        return _dense_float32(X), Y

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
