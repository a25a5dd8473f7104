"""The Keras network behind an estimator: built from a specification.

A specification (`spec`) is a dict of plain values: the shapes, the
activations, the rule, the seed, the optimizer's settings and `alpha`. It
is what an estimator pickles in place of the model, and, without the seed
and the learning rate, what names the network's compiled functions
(`structure`), so that fits of the same structure share them on jax.
"""

import keras
from keras import ops

from keras_fa import alignment as alignment_lib
from keras_fa import engine
from keras_fa import models

# scikit-learn's activation names, as Keras names them.
ACTIVATIONS = {
    "identity": "linear",
    "logistic": "sigmoid",
    "tanh": "tanh",
    "relu": "relu",
}
_OPTIMIZERS = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}


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


def build(spec):
    """Returns the compiled model of `spec`, its optimizer built."""
    model = models.dense_network(
        (spec["n_features"],),
        spec["n_outputs"],
        feedback=spec["feedback"],
        hidden=spec["hidden"],
        activation=spec["activation"],
        seed=spec["seed"],
    )
    model.compile(
        optimizer=_OPTIMIZERS[spec["solver"]](**spec["optimizer"]),
        loss=_loss(spec["out_activation"]),
    )
    model.optimizer.build(model.trainable_variables)
    return model


def trainer(model, spec):
    """Returns the `engine.Trainer` of `model`, with scikit-learn's penalty
    `alpha / 2 * sum |W|^2` over the forward kernels (divided by the
    batch's sum of sample weights, as scikit-learn divides it)."""
    return engine.Trainer(
        model, penalty=_l2_penalty(model, spec["alpha"]), key=structure(spec)
    )


def meter(model, spec):
    """Returns the alignment meter of `model`, sharing its compiled
    functions with networks of the same structure."""
    return alignment_lib.Alignment(model, share=structure(spec))


def _l2_penalty(model, alpha):
    if not alpha:
        return None
    kernels = {id(layer.kernel) for layer in kernel_layers(model)}
    index = [
        i for i, v in enumerate(model.trainable_variables) if id(v) in kernels
    ]

    def penalty(trainable):
        squares = [ops.sum(ops.square(trainable[i])) for i in index]
        return 0.5 * alpha * sum(squares)

    return penalty


def kernel_layers(model):
    """The model's layers with a forward kernel, input side first."""
    # `dense_network` builds a flat network: its kernels are all in
    # `model.layers` (the direct rules' head holds feedback, no kernel).
    return [
        layer
        for layer in model.layers
        if getattr(layer, "kernel", None) is not None
    ]


def structure(spec):
    """What fixes a network's compiled functions: its spec without the
    seed (weights) and the learning rate (a variable)."""
    optimizer = {
        k: v for k, v in spec["optimizer"].items() if k != "learning_rate"
    }
    rest = {k: v for k, v in spec.items() if k not in ("seed", "optimizer")}
    return (tuple(sorted(rest.items())), tuple(sorted(optimizer.items())))


def layer_keys(layer_names):
    """Maps the model's kernel layers to `hidden_1`, ..., `output`."""
    keys = {}
    for i, name in enumerate(layer_names):
        last = i == len(layer_names) - 1
        keys[name] = "output" if last else f"hidden_{i + 1}"
    return keys
