"""Standard networks built from keras_fa layers, trained by any rule.

`mlp`, `lenet`, `resnet` and `transformer` return functional Keras models
whose kernel layers all follow one feedback rule. Layer-wise rules (`"bp"`,
`"fa"`, `"usf"`, `"brsf"`, `"frsf"`, `"kp"`, `"wm"`) go to every `FADense` /
`FAConv*` / `FAMultiHeadAttention` layer. Direct rules (`"dfa"`, `"drtp"`,
`"shallow"`) build the same network of plain Keras layers, tap the output
of every hidden block, cut it with `BlockGradient`, and end in a
`DirectFeedback` layer, in a `DirectFeedbackModel`.

For one `seed`, every rule starts from the same forward weights, so rules
differ only in how they learn. The models output logits: compile them with a
`from_logits=True` loss.
"""

import collections
import math

import keras
from keras import ops

from keras_fa import feedback as feedback_lib
from keras_fa._validation import check_integer
from keras_fa._validation import check_real
from keras_fa._validation import is_integer
from keras_fa.direct import BlockGradient
from keras_fa.direct import DirectFeedback
from keras_fa.direct import DirectFeedbackModel
from keras_fa.layers import FAConv1D
from keras_fa.layers import FAConv2D
from keras_fa.layers import FADense
from keras_fa.layers import FAMultiHeadAttention
from keras_fa.layers.einsum_dense import with_kernel_axes
from keras_fa.seeding import layer_seed
from keras_fa.seeding import reseeded
from keras_fa.seeding import standardize_seed

MODELS = ("mlp", "lenet", "resnet", "transformer")


def rules():
    """Returns every rule name the model builders accept (an alias of
    `keras_fa.feedback.names()`)."""
    return feedback_lib.names()


class _Network:
    """Makes the layers of one network: the rule, seeds, and taps."""

    def __init__(self, feedback, seed):
        if feedback_lib.is_direct(feedback):
            self.direct = feedback_lib.get_direct(feedback)
            self.rule = None
        else:
            self.direct = None
            try:
                self.rule = feedback_lib.get(feedback)
            except ValueError as error:
                # feedback.get knows only the layer-wise rules.
                raise ValueError(
                    f"Unknown feedback rule for `feedback`. Allowed names: "
                    f"{', '.join(rules())}; or a config dict or a "
                    "keras_fa.feedback.FeedbackRule object. Received: "
                    f"feedback={feedback!r}"
                ) from error
        self.seed = standardize_seed(seed)
        self._count = 0
        self.taps = []
        # How the direct head feeds taps with positions the logits lack.
        self.positions = "flatten"

    def _next_seed(self):
        # Layer 1, 2, ... in the order the builders make them.
        self._count += 1
        return layer_seed(self.seed, self._count)

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

    def attention(self, num_heads, key_dim, sequence_shape, **kwargs):
        """Returns a built self-attention layer for `sequence_shape`."""
        seed = self._next_seed()
        if self.direct:
            layer = keras.layers.MultiHeadAttention(
                num_heads, key_dim, seed=seed, **kwargs
            )
        else:
            layer = FAMultiHeadAttention(
                num_heads,
                key_dim,
                feedback=self.rule,
                seed=seed,
                **kwargs,
            )
        layer.build(sequence_shape, sequence_shape)
        # Keras gives the four projections clones of one initializer: seeded,
        # they would start equal. Each gets its own seed instead.
        for projection in (
            layer.query_dense,
            layer.key_dense,
            layer.value_dense,
            layer.output_dense,
        ):
            self._reseed(projection)
        return layer

    def _reseed(self, projection):
        """Redraws the kernel of a built attention projection from the next
        layer seed (when the network is seeded)."""
        seed = self._next_seed()
        if seed is None:
            return
        # The projection's own initializer, with the fans Keras takes from
        # its equation (not from the kernel's shape).
        initializer = with_kernel_axes(
            reseeded(projection.kernel_initializer, seed),
            projection.equation,
            len(projection.get_build_config()["input_shape"]),
        )
        kernel = projection.kernel
        kernel.assign(initializer(kernel.shape, dtype=kernel.dtype))

    def embedding_initializer(self):
        """Returns the (seeded) initializer of an embedding table."""
        return keras.initializers.RandomNormal(
            stddev=0.02, seed=self._next_seed()
        )

    def block_end(self, x):
        """Marks the end of a hidden block: tapped under direct rules."""
        if not self.direct:
            return x
        self.taps.append(x)
        return BlockGradient()(x)

    def model(self, inputs, logits, name):
        if not self.direct:
            return keras.Model(inputs, logits, name=name)
        head = DirectFeedback(
            self.direct, seed=self.seed, positions=self.positions
        )
        outputs = head([logits, *self.taps])
        return DirectFeedbackModel(inputs, outputs, name=name)


def _positive_ints(value):
    """`value` as a tuple of ints if it is a sequence of positive integers
    (a list, tuple, numpy shape...), else None."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return None
    value = tuple(value)
    if not all(is_integer(d) and d >= 1 for d in value):
        return None
    return tuple(int(d) for d in value)


def _shape(name, value):
    """Returns `value` as a non-empty tuple of positive ints, or raises a
    ValueError naming `name`."""
    shape = _positive_ints(value)
    if not shape:
        raise ValueError(
            f"`{name}` must be a tuple of positive integers (without the "
            f"batch axis). Received: {name}={value!r}"
        )
    return shape


def _input(input_shape, dtype=None):
    return keras.Input(_shape("input_shape", input_shape), dtype=dtype)


def _check_classes(num_classes):
    return check_integer("num_classes", num_classes, minimum=2)


def _check_hidden(hidden):
    units = _positive_ints(hidden)
    if units is None:
        raise ValueError(
            "`hidden` must be a tuple of positive integers, the units of "
            f"each hidden layer (may be empty). Received: hidden={hidden!r}"
        )
    return units


def _spatial(inputs, image_shape=None):
    # Convolutions need (length, channels) or (height, width, channels):
    # flat feature vectors become images of `image_shape` if given, else
    # one-channel sequences.
    if image_shape is not None:
        image_shape = _shape("image_shape", image_shape)
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
        feedback: a rule name in any case (see `keras_fa.models.rules()`),
            config or `FeedbackRule`.
        hidden: units of each hidden layer.
        activation: activation of the hidden layers.
        seed: integer seed of the forward and feedback weights.

    Example:

    >>> model = keras_fa.models.mlp((40,), 10, feedback="fa", seed=0)
    """
    num_classes = _check_classes(num_classes)
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
    outputs = check_integer("outputs", outputs, minimum=1)
    hidden = _check_hidden(hidden)
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
    num_classes = _check_classes(num_classes)
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
    num_classes = _check_classes(num_classes)
    depth = _check_depth(depth)
    width = check_integer("width", width, minimum=1)
    net = _Network(feedback, seed)
    inputs = _input(input_shape)
    x, rank = _spatial(inputs, image_shape)
    x = net.conv(rank, width, 3, padding="same", use_bias=False)(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for stage in range(3):
        for block in range((depth - 2) // 6):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _residual_block(net, x, rank, width * 2**stage, strides)
            x = net.block_end(x)
    x = _GLOBAL_POOLING[rank]()(x)
    logits = net.dense(num_classes)(x)
    return net.model(inputs, logits, name=f"resnet{depth}_{_name(feedback)}")


_GLOBAL_POOLING = {
    1: keras.layers.GlobalAveragePooling1D,
    2: keras.layers.GlobalAveragePooling2D,
}


def _check_depth(depth):
    if not is_integer(depth) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            "`depth` must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56...). "
            f"Received: depth={depth!r}"
        )
    return int(depth)


def _residual_block(net, x, rank, filters, strides):
    """Returns a basic residual block's output: two 3x3 convolutions with
    batch normalization, and a 1x1 projection shortcut when the shape
    changes."""
    norm = keras.layers.BatchNormalization
    conv = dict(padding="same", use_bias=False)
    y = net.conv(rank, filters, 3, strides=strides, **conv)(x)
    y = keras.layers.ReLU()(norm()(y))
    y = net.conv(rank, filters, 3, **conv)(y)
    y = norm()(y)
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        project = net.conv(rank, filters, 1, strides=strides, use_bias=False)
        shortcut = norm()(project(x))
    return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))


TRANSFORMER_HEADS = ("pool", "token")


@keras.saving.register_keras_serializable(package="keras_fa")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position to a sequence.

    Called on `(batch, sequence_length, width)` inputs, it returns `inputs`
    plus one learned row per position: the table of a
    `keras.layers.Embedding` built for the input's length and width. The
    table sends no error anywhere, so it learns its exact gradient under
    every rule (`feedback_summary` says so). The error reaches `inputs`
    unchanged.

    Args:
        embeddings_initializer: initializer of the table.
        **kwargs: base layer arguments (name, dtype...).

    Example:

    >>> x = keras.Input((49, 64))
    >>> y = keras_fa.models.PositionEmbedding()(x)  # (None, 49, 64)
    """

    def __init__(self, embeddings_initializer="uniform", **kwargs):
        super().__init__(**kwargs)
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer
        )
        self.position_embedding = None

    def build(self, input_shape):
        if len(input_shape) != 3 or None in tuple(input_shape[1:]):
            raise ValueError(
                "PositionEmbedding takes inputs of shape (batch, "
                "sequence_length, width) with a known length and width. "
                f"Received: {tuple(input_shape)}"
            )
        self.position_embedding = keras.layers.Embedding(
            input_shape[1],
            input_shape[2],
            embeddings_initializer=self.embeddings_initializer,
            dtype=self.dtype_policy,
            name="position_embedding",
        )
        self.position_embedding.build()

    def call(self, inputs):
        # Positions 0..length-1 read the whole table, in order.
        positions = self.position_embedding.embeddings
        return ops.add(inputs, ops.cast(positions, inputs.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "embeddings_initializer": keras.initializers.serialize(
                self.embeddings_initializer
            ),
        }


def _patch(patch_size, size, kind):
    # One patch length per spatial axis; it must tile the input exactly.
    rank = len(size)
    patch = patch_size
    if is_integer(patch):
        patch = (patch,) * rank
    if (
        not isinstance(patch, (tuple, list))
        or len(patch) != rank
        or any(not is_integer(p) or p < 1 for p in patch)
    ):
        raise ValueError(
            f"`patch_size` must be a positive integer or a tuple of {rank} "
            f"for {kind} inputs of size {size}. Received: "
            f"patch_size={patch_size!r}"
        )
    patch = tuple(int(p) for p in patch)
    if any(s % p for s, p in zip(size, patch)):
        raise ValueError(
            f"`patch_size` {patch_size!r} must divide the {kind} size "
            f"{size} on every axis, so that the patches tile it."
        )
    return patch


def _token_inputs(net, input_shape, hidden_dim, vocabulary_size):
    if len(input_shape) != 1:
        raise ValueError(
            "With `vocabulary_size`, the inputs are token ids: "
            "`input_shape` must be (sequence_length,). Received: "
            f"input_shape={input_shape!r}"
        )
    inputs = _input(input_shape, dtype="int32")
    x = keras.layers.Embedding(
        vocabulary_size,
        hidden_dim,
        embeddings_initializer=net.embedding_initializer(),
    )(inputs)
    return inputs, x


def _feature_inputs(net, input_shape, hidden_dim, patch_size, image_shape):
    inputs = _input(input_shape)
    x, rank = _spatial(inputs, image_shape)
    size = tuple(x.shape[1:-1])
    kind = "image" if rank == 2 else "sequence"
    if rank == 2 and patch_size is None:
        raise ValueError(
            f"Image inputs {size} need a `patch_size` (a side of the "
            "square patches that become the tokens, e.g. 4 for 28x28 or "
            "32x32 images). Received: patch_size=None"
        )
    if patch_size is None:
        # A sequence: each position's features projected to the width.
        return inputs, net.dense(hidden_dim)(x)
    patch = _patch(patch_size, size, kind)
    x = net.conv(rank, hidden_dim, patch, strides=patch)(x)
    tokens = math.prod(s // p for s, p in zip(size, patch))
    return inputs, keras.layers.Reshape((tokens, hidden_dim))(x)


# long: 15 arguments: signature 17 lines, docstring 38, body 28 in steps.
def transformer(
    input_shape,
    num_classes,
    feedback="fa",
    seed=None,
    *,
    num_layers=2,
    num_heads=2,
    hidden_dim=64,
    intermediate_dim=128,
    dropout=0.0,
    patch_size=None,
    vocabulary_size=None,
    head="pool",
    image_shape=None,
    use_causal_mask=False,
):
    """Returns a small pre-norm transformer encoder trained by `feedback`.

    The inputs become `hidden_dim`-wide tokens (token ids through an
    `Embedding`, images cut into `patch_size` patches by a convolution,
    feature sequences projected position by position), plus a learned
    `PositionEmbedding`; then `num_layers` blocks `x = x + MHA(LN(x))`,
    `x = x + MLP(LN(x))`, a final layer normalization and the head. Under a
    layer-wise rule every kernel layer is a keras_fa layer (the embedding
    tables learn as under backprop); under direct rules every block's
    output is tapped, and with the pooled head its tokens share one B_l
    (`DirectFeedback(positions="shared")`).

    Args:
        input_shape: `(length,)` token ids or scalars, `(length, channels)`
            or `(height, width, channels)`.
        num_classes: number of classes (logits).
        feedback: a rule name, config or `FeedbackRule`.
        seed: integer seed of the forward and feedback weights.
        num_layers: number of transformer blocks.
        num_heads: attention heads; they split `hidden_dim`.
        hidden_dim: width of the tokens, a multiple of `num_heads`.
        intermediate_dim: hidden units (GELU) of each block's MLP.
        dropout: rate of the attention weights' and residual branches'
            dropout, in [0, 1).
        patch_size: side of the patches (an int, or one per spatial axis),
            dividing the input; needed for images.
        vocabulary_size: number of token ids, for integer inputs.
        head: `"pool"` (mean of the tokens: `(batch, num_classes)` logits)
            or `"token"` (`(batch, length, num_classes)`).
        image_shape: for flat inputs, the image they hold, e.g. `(8, 8, 1)`.
        use_causal_mask: whether a token attends only to itself and the
            tokens before it (language modelling with `head="token"`).

    Example:

    >>> model = keras_fa.models.transformer(
    ...     (28, 28, 1), 10, feedback="fa", seed=0, patch_size=4)
    """
    num_classes = _check_classes(num_classes)
    blocks = _check_blocks(
        num_layers, num_heads, hidden_dim, intermediate_dim, dropout
    )
    _check_head(head, use_causal_mask)
    input_shape, vocabulary_size = _check_inputs(
        input_shape, vocabulary_size, patch_size, image_shape
    )
    net = _Network(feedback, seed)
    # A pooled head shares the error among the tokens: each token of a tap
    # gets the same direct signal (one B of hidden_dim columns, scaled by
    # 1/length) rather than a B row per token, which trains far better.
    net.positions = "shared"
    if vocabulary_size is None:
        inputs, x = _feature_inputs(
            net, input_shape, hidden_dim, patch_size, image_shape
        )
    else:
        inputs, x = _token_inputs(net, input_shape, hidden_dim, vocabulary_size)
    x = PositionEmbedding(net.embedding_initializer())(x)
    for _ in range(blocks.num_layers):
        x = _transformer_block(net, x, blocks, use_causal_mask)
        x = net.block_end(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    if head == "pool":
        x = keras.layers.GlobalAveragePooling1D()(x)
    logits = net.dense(num_classes)(x)
    return net.model(inputs, logits, name=f"transformer_{_name(feedback)}")


#: The sizes of a transformer's blocks, checked.
_Blocks = collections.namedtuple(
    "_Blocks",
    ["num_layers", "num_heads", "hidden_dim", "intermediate_dim", "dropout"],
)


def _check_blocks(num_layers, num_heads, hidden_dim, intermediate_dim, dropout):
    num_layers = check_integer("num_layers", num_layers, minimum=1)
    num_heads = check_integer("num_heads", num_heads, minimum=1)
    hidden_dim = check_integer("hidden_dim", hidden_dim, minimum=1)
    intermediate_dim = check_integer(
        "intermediate_dim", intermediate_dim, minimum=1
    )
    if hidden_dim % num_heads:
        raise ValueError(
            "`hidden_dim` must be a multiple of `num_heads` (the heads split "
            f"it). Received: hidden_dim={hidden_dim}, num_heads={num_heads}"
        )
    dropout = check_real("dropout", dropout, minimum=0, maximum=1)
    return _Blocks(num_layers, num_heads, hidden_dim, intermediate_dim, dropout)


def _check_head(head, use_causal_mask):
    if head not in TRANSFORMER_HEADS:
        raise ValueError(
            f"`head` must be one of {', '.join(TRANSFORMER_HEADS)}. "
            f"Received: head={head!r}"
        )
    if not isinstance(use_causal_mask, bool):
        raise ValueError(
            "`use_causal_mask` must be True or False. Received: "
            f"use_causal_mask={use_causal_mask!r}"
        )


def _check_inputs(input_shape, vocabulary_size, patch_size, image_shape):
    """Returns a transformer's `input_shape` and `vocabulary_size`,
    checked (token ids come without `patch_size` and `image_shape`)."""
    if vocabulary_size is not None:
        vocabulary_size = check_integer(
            "vocabulary_size", vocabulary_size, minimum=1
        )
        if patch_size is not None or image_shape is not None:
            raise ValueError(
                "`patch_size` and `image_shape` are for images and feature "
                "sequences, not token ids (`vocabulary_size` given). "
                f"Received: patch_size={patch_size!r}, "
                f"image_shape={image_shape!r}"
            )
    input_shape = _shape("input_shape", input_shape)
    if not 1 <= len(input_shape) <= 3:
        raise ValueError(
            "`input_shape` must be (length,), (length, channels) or (height, "
            f"width, channels). Received: input_shape={input_shape!r}"
        )
    return input_shape, vocabulary_size


def _transformer_block(net, x, blocks, use_causal_mask):
    """Returns one pre-norm block's output: `x + MHA(LN(x))`, then
    `x + MLP(LN(x))`."""
    h = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    attention = net.attention(
        blocks.num_heads,
        blocks.hidden_dim // blocks.num_heads,
        tuple(h.shape),
        dropout=blocks.dropout,
    )
    h = attention(h, h, use_causal_mask=use_causal_mask)
    x = keras.layers.Add()([x, _dropout(h, blocks.dropout)])
    h = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    h = net.dense(blocks.intermediate_dim, activation="gelu")(h)
    h = net.dense(blocks.hidden_dim)(h)
    return keras.layers.Add()([x, _dropout(h, blocks.dropout)])


def _dropout(x, rate):
    return keras.layers.Dropout(rate)(x) if rate else x


def _name(feedback):
    if isinstance(feedback, str):
        return feedback.lower()
    return getattr(feedback_lib.get(feedback), "name", None) or "custom"


def get(name, input_shape, num_classes, feedback="fa", seed=None, **kwargs):
    """Returns the model `name` (`"mlp"`, `"lenet"`, `"resnet"`,
    `"resnet<depth>"` such as `"resnet20"`, or `"transformer"`) built by its
    function; `kwargs` go to that function."""
    key = str(name).lower()
    if key.startswith("resnet") and key[6:].isdigit():
        kwargs.setdefault("depth", int(key[6:]))
        key = "resnet"
    builders = {
        "mlp": mlp,
        "lenet": lenet,
        "resnet": resnet,
        "transformer": transformer,
    }
    if key not in builders:
        raise ValueError(
            f"Unknown model {name!r}. Allowed: mlp, lenet, resnet, "
            "resnet<depth> (e.g. resnet20), transformer."
        )
    return builders[key](
        input_shape, num_classes, feedback=feedback, seed=seed, **kwargs
    )
