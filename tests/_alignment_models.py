"""Models, data and numpy references shared by the alignment tests
(tests/test_alignment_*.py, and the callbacks and training tests that check
the conservation status of every layer type).

The references are written out in numpy from the layers' weights: forward
pass, the rule's backward pass and backprop's, and the conservation
quantity Q of Robertson & Koyejo.
"""

import keras
import numpy as np

import keras_fa
from keras_fa.feedback.base import glorot_scale

LAYER_RULES = ("bp", "fa", "usf", "frsf", "kp", "wm")
FIXED = ("fa", "usf", "frsf")  # phi = W * B
TIED = ("bp", "kp")  # phi = W * B - W^2 / 2


def mlp(rule, sizes=(7, 9, 8, 4), bias=True, seed=0, optimizer="sgd"):
    layers = [keras.Input((sizes[0],))]
    for i, units in enumerate(sizes[1:]):
        last = i == len(sizes) - 2
        layers.append(
            keras_fa.FADense(
                units,
                activation=None if last else "relu",
                use_bias=bias,
                feedback=rule,
                seed=seed + i,
                bias_initializer="random_normal" if bias else "zeros",
            )
        )
    model = keras.Sequential(layers)
    model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def mlp_data(n=12, d=7, k=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.integers(0, k, size=n)
    return x, y


def forward_weights(model):
    return [
        w
        for w, v in zip(model.get_weights(), model.weights)
        if "feedback" not in v.path
    ]


def as_numpy(v):
    return keras.ops.convert_to_numpy(v).astype(np.float64)


def feedback_np(layer):
    """The B a layer-wise rule uses, from the layer's weights."""
    w = as_numpy(layer.kernel)
    name = layer.feedback.name
    if name == "bp":
        return w
    if name in ("fa", "kp", "wm"):
        return as_numpy(layer.feedback_kernel)
    if name == "usf":
        return np.sign(w) * glorot_scale(w.shape)
    if name == "frsf":
        return np.sign(w) * np.abs(as_numpy(layer.feedback_kernel))
    raise ValueError(name)


def reference(model, x, y):
    """numpy forward and backward passes of a ReLU MLP of FADense layers,
    with the rules' B and with W; mean softmax cross-entropy."""
    layers = model.layers
    ws = [as_numpy(layer.kernel) for layer in layers]
    bs = [
        np.zeros(w.shape[1]) if layer.bias is None else as_numpy(layer.bias)
        for w, layer in zip(ws, layers)
    ]
    feedbacks = [feedback_np(layer) for layer in layers]
    hs, pre = [x.astype(np.float64)], []
    for i, (w, b) in enumerate(zip(ws, bs)):
        a = hs[-1] @ w + b
        pre.append(a)
        hs.append(np.maximum(a, 0) if i < len(ws) - 1 else a)
    logits = hs[-1]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = (p - np.eye(logits.shape[1])[y]) / len(x)
    out = {}
    for mode, back in (("rule", feedbacks), ("true", ws)):
        deltas = [e]
        for i in range(len(ws) - 1, 0, -1):
            deltas.insert(0, (deltas[0] @ back[i].T) * (pre[i - 1] > 0))
        out[mode] = {
            "delta": deltas,
            "dW": [h.T @ d for h, d in zip(hs[:-1], deltas)],
            "db": [d.sum(0) for d in deltas],
        }
    out["W"], out["b"], out["B"] = ws, bs, feedbacks
    return out


def q_np(ref, rule, layer_index, bias=True):
    w, b = ref["W"][layer_index], ref["b"][layer_index]
    w_next, b_next = ref["W"][layer_index + 1], ref["B"][layer_index + 1]
    q = (w**2).sum(0) + (b**2 if bias else 0.0)
    if rule in FIXED:
        phi = w_next * b_next
    else:
        phi = w_next * b_next - w_next**2 / 2
    return q - 2 * phi.sum(1)


def cnn(rule):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras_fa.FAConv2D(3, 3, activation="relu", feedback=rule, seed=0),
            keras.layers.MaxPooling2D(),
            keras_fa.FAConv2D(
                4, 2, padding="same", activation="relu", feedback=rule, seed=1
            ),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.2, seed=5),
            keras_fa.FADense(5, feedback=rule, seed=2),
        ]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(True))
    return model


def direct_model(rule):
    base = keras.Sequential(
        [
            keras.Input((7,)),
            keras.layers.Dense(9, activation="relu"),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(4),
        ]
    )
    model = keras_fa.direct_feedback(base, rule, seed=3)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(True))
    return model


def layers_model(rule="fa", attention=2):
    """Each new kind of kernel: separable (two kernels), depthwise,
    transposed, einsum, and two attention layers (whose projections have
    the same names)."""
    inputs = keras.Input((5, 5, 2))
    kw = dict(feedback=rule, activation="relu")
    h = keras_fa.FASeparableConv2D(3, 2, depth_multiplier=2, seed=0, **kw)(
        inputs
    )
    h = keras_fa.FADepthwiseConv2D(
        2, padding="same", depth_multiplier=2, seed=1, **kw
    )(h)
    h = keras_fa.FAConv2DTranspose(2, 2, seed=2, **kw)(h)
    h = keras.layers.Reshape((25, 2))(h)
    h = keras_fa.FAEinsumDense(
        "abc,cd->abd", (None, 4), bias_axes="d", feedback=rule, seed=3
    )(h)
    for i in range(attention):
        h = keras_fa.FAMultiHeadAttention(2, 2, feedback=rule, seed=4 + 5 * i)(
            h, h
        )
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras_fa.FADense(3, feedback=rule, seed=14)(h)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.SGD(0.05),
        keras.losses.SparseCategoricalCrossentropy(True),
    )
    return model


def image_data(n=6, shape=(5, 5, 2), k=3):
    x = np.random.default_rng(0).normal(size=(n, *shape)).astype("float32")
    return x, np.arange(n) % k


ANGLES = ("weight_angle", "signal_angle", "update_angle")
PROJECTIONS = ("query", "key", "value", "attention_output")
KERNELS = [
    "fa_separable_conv2d/depthwise_kernel",
    "fa_separable_conv2d/pointwise_kernel",
    "fa_depthwise_conv2d",
    "fa_conv2d_transpose",
    "fa_einsum_dense",
    *(f"fa_multi_head_attention/{p}" for p in PROJECTIONS),
    *(f"fa_multi_head_attention_1/{p}" for p in PROJECTIONS),
    "fa_dense",
]


def kernel_units(model):
    """{name: the feedback unit of each kernel}, in the model's order."""
    separable, depthwise, transpose, _, einsum, *attention, _, dense = (
        model.layers[1:]
    )
    units = {
        f"{separable.name}/depthwise_kernel": separable.depthwise_feedback,
        f"{separable.name}/pointwise_kernel": separable.pointwise_feedback,
        depthwise.name: depthwise,
        transpose.name: transpose,
        einsum.name: einsum,
    }
    for layer in attention:
        for attribute, name in zip(
            ("_query_dense", "_key_dense", "_value_dense", "_output_dense"),
            PROJECTIONS,
        ):
            units[f"{layer.name}/{name}"] = getattr(layer, attribute)
    units[dense.name] = dense
    return units


ANGLES_AND_RATIO = (
    "weight_angle",
    "norm_ratio",
    "signal_angle",
    "update_angle",
)
