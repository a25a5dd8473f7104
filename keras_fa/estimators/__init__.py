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

The package is the scikit-learn glue only: `base` (parameters, the fitting
loop, stopping rules, pickling), `classifier` and `regressor`, `params`
(scikit-learn's constraints) and `network` (the Keras network of a fit);
the training itself is `keras_fa.engine.Trainer`'s.
"""

from keras_fa.estimators.base import _FAMultilayerPerceptron  # noqa: F401
from keras_fa.estimators.classifier import FAClassifier
from keras_fa.estimators.regressor import FARegressor

__all__ = ["FAClassifier", "FARegressor"]
