"""Standard networks built from keras_fa layers, trained by any rule.

`mlp`, `lenet` and `resnet` return functional Keras models whose kernel
layers all follow one feedback rule. Layer-wise rules (`"bp"`, `"fa"`,
`"usf"`, `"brsf"`, `"frsf"`, `"kp"`, `"wm"`) go to every `FADense` /
`FAConv*` layer. Direct rules (`"dfa"`, `"drtp"`, `"shallow"`) build the same
network of plain Keras layers, tap the output of every block but the last,
cut it with `BlockGradient`, and end in a `DirectFeedback` layer, in a
`DirectFeedbackModel`.

For one `seed`, every rule starts from the same forward weights, so rules
differ only in how they learn. The models output logits: compile them with a
`from_logits=True` loss.
"""

import math

import keras

from keras_fa import feedback as feedback_lib
from keras_fa.direct import DIRECT_RULES
from keras_fa.direct import BlockGradient
from keras_fa.direct import DirectFeedback
from keras_fa.direct import DirectFeedbackModel
from keras_fa.layers import FAConv1D
from keras_fa.layers import FAConv2D
from keras_fa.layers import FADense
from keras_fa.layers.base import standardize_seed

MODELS = ("mlp", "lenet", "resnet")


def rules():
    """Returns every rule name the model builders accept."""
    return sorted(set(feedback_lib.registered_names()) | set(DIRECT_RULES))


class _Network:
    """Makes the layers of one network: the rule, seeds, and taps."""

    def __init__(self, feedback, seed):
        if isinstance(feedback, str) and feedback.lower() in DIRECT_RULES:
            self.direct = feedback.lower()
            self.rule = None
        else:
            self.direct = None
            self.rule = feedback_lib.get(feedback)
        self.seed = standardize_seed(seed)
        self._count = 0
        self.taps = []

    def _next_seed(self):
        self._count += 1
        if self.seed is None:
            return None
        return self.seed * 1000 + self._count

    def _kernel_args(self, kwargs):
        seed = self._next_seed()
        kwargs.setdefault(
            "kernel_initializer", keras.initializers.GlorotUniform(seed)
        )
        if self.direct:
            return kwargs
        return {**kwargs, "feedback": self.rule, "seed": seed}

    def dense(self, units, **kwargs):
        kwargs = self._kernel_args(kwargs)
        if self.direct:
            return keras.layers.Dense(units, **kwargs)
        return FADense(units, **kwargs)

    def conv(self, rank, filters, kernel_size, **kwargs):
        kwargs = self._kernel_args(kwargs)
        if self.direct:
            layer = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D}[rank]
        else:
            layer = {1: FAConv1D, 2: FAConv2D}[rank]
        return layer(filters, kernel_size, **kwargs)

    def block_end(self, x):
        """Marks the end of a hidden block: tapped under direct rules."""
        if not self.direct:
            return x
        self.taps.append(x)
        return BlockGradient()(x)

    def model(self, inputs, logits, name):
        if not self.direct:
            return keras.Model(inputs, logits, name=name)
        head = DirectFeedback(self.direct, seed=self.seed)
        outputs = head([logits, *self.taps])
        return DirectFeedbackModel(inputs, outputs, name=name)


def _input(input_shape):
    input_shape = tuple(input_shape)
    if not input_shape or any(
        not isinstance(d, int) or d < 1 for d in input_shape
    ):
        raise ValueError(
            "`input_shape` must be a tuple of positive integers (without the "
            f"batch axis). Received: {input_shape!r}"
        )
    return keras.Input(input_shape)


def _check_classes(num_classes):
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or num_classes < 2
    ):
        raise ValueError(
            f"`num_classes` must be an integer >= 2. Received: {num_classes!r}"
        )


def _spatial(inputs, image_shape=None):
    # Convolutions need (length, channels) or (height, width, channels):
    # flat feature vectors become images of `image_shape` if given, else
    # one-channel sequences.
    if image_shape is not None:
        image_shape = tuple(image_shape)
        if len(inputs.shape) != 2 or math.prod(image_shape) != inputs.shape[1]:
            raise ValueError(
                f"`image_shape` {image_shape} must hold exactly the "
                f"{tuple(inputs.shape[1:])} flat input features."
            )
        x = keras.layers.Reshape(image_shape)(inputs)
        return x, len(image_shape) - 1
    if len(inputs.shape) == 2:
        return keras.layers.Reshape((inputs.shape[1], 1))(inputs), 1
    if len(inputs.shape) == 4:
        return inputs, 2
    if len(inputs.shape) == 3:
        return inputs, 1
    raise ValueError(
        "Convolutional models take inputs of shape (features,), (length, "
        f"channels) or (height, width, channels). Received: "
        f"{tuple(inputs.shape[1:])}"
    )


def mlp(
    input_shape,
    num_classes,
    feedback="fa",
    hidden=(256, 256),
    activation="relu",
    seed=None,
):
    """Returns a multilayer perceptron trained by `feedback`.

    Inputs of any shape are flattened; each hidden layer is a dense layer
    with `activation`, and the output layer gives `num_classes` logits.

    Args:
        input_shape: shape of one example, e.g. `(784,)` or `(28, 28, 1)`.
        num_classes: number of classes (logits).
        feedback: a rule name (see `keras_fa.models.rules()`), config or
            `FeedbackRule`.
        hidden: units of each hidden layer.
        activation: activation of the hidden layers.
        seed: integer seed of the forward and feedback weights.

    Example:

    >>> model = keras_fa.models.mlp((40,), 10, feedback="fa", seed=0)
    """
    _check_classes(num_classes)
    return dense_network(
        input_shape, num_classes, feedback, hidden, activation, seed
    )


def dense_network(
    input_shape,
    outputs,
    feedback="fa",
    hidden=(256, 256),
    activation="relu",
    seed=None,
):
    """Returns `mlp`'s network with any number (>= 1) of linear `outputs`:
    logits of one class (binary), several labels, or regression targets.
    The arguments are those of `mlp`."""
    if isinstance(outputs, bool) or not isinstance(outputs, int) or outputs < 1:
        raise ValueError(
            f"`outputs` must be an integer >= 1. Received: {outputs!r}"
        )
    net = _Network(feedback, seed)
    inputs = _input(input_shape)
    x = inputs
    if len(inputs.shape) > 2:
        x = keras.layers.Flatten()(x)
    for units in hidden:
        x = net.dense(units, activation=activation)(x)
        x = net.block_end(x)
    logits = net.dense(outputs)(x)
    return net.model(inputs, logits, name=f"mlp_{_name(feedback)}")


def lenet(input_shape, num_classes, feedback="fa", seed=None, image_shape=None):
    """Returns a LeNet-5-style CNN trained by `feedback`.

    Two convolution blocks (6 and 16 filters of size 5, `same` padding, ReLU,
    2x max pooling), then dense layers of 120 and 84 ReLU units and the
    logits. Images `(h, w, c)` get 2D convolutions; sequences
    `(length, channels)` and flat vectors `(features,)` (as one channel) get
    1D convolutions.

    Args:
        input_shape: shape of one example.
        num_classes: number of classes (logits).
        feedback: a rule name, config or `FeedbackRule`.
        seed: integer seed of the forward and feedback weights.
        image_shape: for flat inputs, the image they hold, e.g. `(8, 8, 1)`
            for scikit-learn's digits; the model reshapes them first.

    Example:

    >>> model = keras_fa.models.lenet((28, 28, 1), 10, feedback="usf", seed=0)
    """
    _check_classes(num_classes)
    net = _Network(feedback, seed)
    inputs = _input(input_shape)
    x, rank = _spatial(inputs, image_shape)
    pool = {1: keras.layers.MaxPooling1D, 2: keras.layers.MaxPooling2D}[rank]
    for filters in (6, 16):
        x = net.conv(rank, filters, 5, padding="same", activation="relu")(x)
        x = pool(2, padding="same")(x)
        x = net.block_end(x)
    x = keras.layers.Flatten()(x)
    for units in (120, 84):
        x = net.dense(units, activation="relu")(x)
        x = net.block_end(x)
    logits = net.dense(num_classes)(x)
    return net.model(inputs, logits, name=f"lenet_{_name(feedback)}")


def resnet(
    input_shape,
    num_classes,
    feedback="fa",
    depth=20,
    width=16,
    seed=None,
    image_shape=None,
):
    """Returns a CIFAR-style ResNet (He et al. 2016) trained by `feedback`.

    `depth = 6n + 2`: a 3x3 convolution, three stages of n basic blocks
    (two 3x3 convolutions with batch normalization and ReLU, and a shortcut)
    with `width`, `2 width` and `4 width` filters, the last two starting with
    stride 2 and a 1x1 projection shortcut, then global average pooling and
    the logits. Depth 20 is ResNet-20 (0.27M parameters at width 16). 1D
    inputs get 1D convolutions. Under direct rules each residual block's
    output is tapped (inside a block, and from the first block to the stem,
    the error travels by backprop).

    Args:
        input_shape: shape of one example, e.g. `(32, 32, 3)`.
        num_classes: number of classes (logits).
        feedback: a rule name, config or `FeedbackRule`.
        depth: 6n + 2 layers: 8, 14, 20, 32, 44, 56...
        width: filters of the first stage.
        seed: integer seed of the forward and feedback weights.
        image_shape: for flat inputs, the image they hold; the model
            reshapes them first.

    Example:

    >>> model = keras_fa.models.resnet((32, 32, 3), 10, feedback="fa")
    """
    _check_classes(num_classes)
    if (
        isinstance(depth, bool)
        or not isinstance(depth, int)
        or depth < 8
        or (depth - 2) % 6
    ):
        raise ValueError(
            "`depth` must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56...). "
            f"Received: {depth!r}"
        )
    net = _Network(feedback, seed)
    inputs = _input(input_shape)
    x, rank = _spatial(inputs, image_shape)
    norm = keras.layers.BatchNormalization
    x = net.conv(rank, width, 3, padding="same", use_bias=False)(x)
    x = keras.layers.ReLU()(norm()(x))
    blocks = (depth - 2) // 6
    for stage in range(3):
        filters = width * 2**stage
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = net.conv(
                rank,
                filters,
                3,
                strides=strides,
                padding="same",
                use_bias=False,
            )(x)
            y = keras.layers.ReLU()(norm()(y))
            y = net.conv(rank, filters, 3, padding="same", use_bias=False)(y)
            y = norm()(y)
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = net.conv(
                    rank, filters, 1, strides=strides, use_bias=False
                )(shortcut)
                shortcut = norm()(shortcut)
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
            x = net.block_end(x)
    pooling = {
        1: keras.layers.GlobalAveragePooling1D,
        2: keras.layers.GlobalAveragePooling2D,
    }[rank]
    x = pooling()(x)
    logits = net.dense(num_classes)(x)
    return net.model(inputs, logits, name=f"resnet{depth}_{_name(feedback)}")


def _name(feedback):
    if isinstance(feedback, str):
        return feedback.lower()
    return getattr(feedback_lib.get(feedback), "name", None) or "custom"


def get(name, input_shape, num_classes, feedback="fa", seed=None, **kwargs):
    """Returns the model `name` (`"mlp"`, `"lenet"`, `"resnet"`, or
    `"resnet<depth>"` such as `"resnet20"`) built by its function."""
    key = str(name).lower()
    if key.startswith("resnet") and key[6:].isdigit():
        kwargs.setdefault("depth", int(key[6:]))
        key = "resnet"
    builders = {"mlp": mlp, "lenet": lenet, "resnet": resnet}
    if key not in builders:
        raise ValueError(
            f"Unknown model {name!r}. Allowed: mlp, lenet, resnet, "
            "resnet<depth> (e.g. resnet20)."
        )
    return builders[key](
        input_shape, num_classes, feedback=feedback, seed=seed, **kwargs
    )
