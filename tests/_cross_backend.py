"""Saves keras_fa models under the active backend: one with every rule, one
with every layer type.

Run by `tests/test_saving.py` as a subprocess, once per other backend:

    KERAS_BACKEND=jax python tests/_cross_backend.py OUT_DIR

writes `OUT_DIR/<backend>.keras` (`build_model()`), the feedback variables it
holds (`OUT_DIR/<backend>_feedback.npz`, keyed `<layer>/<variable>`) and the
model's predictions on `inputs()` (`OUT_DIR/<backend>_predictions.npy`); and
the same for `build_layers_model()` under the prefix `<backend>_layers`, with
all its variables (`OUT_DIR/<backend>_layers_variables.npz`, keyed by path).
"""

import os
import sys

import numpy as np

RULES = ("bp", "fa", "usf", "brsf", "frsf", "kp", "wm")
INPUT_SHAPE = (6, 6, 2)


def inputs():
    """The fixed inputs every backend predicts on."""
    rng = np.random.default_rng(2024)
    return rng.normal(size=(5, *INPUT_SHAPE)).astype("float32")


def build_model():
    """One branch per rule; each layer type serves two rules.

    No seeds: a loader that redrew the feedback instead of loading it would
    get other values.
    """
    import keras

    import keras_fa

    image = keras.Input(INPUT_SHAPE)
    series = keras.layers.Reshape((36, 2))(image)
    flat = keras.layers.Flatten()(image)
    branches = []
    for i, rule in enumerate(RULES):
        kind = ("conv2d", "conv1d", "dense")[i % 3]
        kwargs = dict(feedback=rule, name=f"{rule}_{kind}")
        if kind == "conv2d":
            x = keras_fa.FAConv2D(3, 3, activation="relu", **kwargs)(image)
        elif kind == "conv1d":
            x = keras_fa.FAConv1D(2, 3, padding="causal", **kwargs)(series)
        else:
            x = keras_fa.FADense(4, activation="tanh", **kwargs)(flat)
        branches.append(keras.layers.Flatten()(x))
    return keras.Model(image, keras.layers.Concatenate()(branches))


#: The layers of `build_layers_model()`, by name, in the order of its rules.
LAYER_NAMES = (
    "einsum",
    "conv3d",
    "depthwise1d",
    "depthwise2d",
    "separable1d",
    "separable2d",
    "transpose1d",
    "transpose2d",
    "transpose3d",
    "mha",
    "gqa",
)
#: The rules of `build_layers_model()` saved across backends: each rule at
#: least once, and rules with a feedback kernel on the attention layers.
LAYER_RULES = (
    "bp",
    "fa",
    "usf",
    "brsf",
    "frsf",
    "kp",
    "wm",
    "fa",
    "kp",
    "wm",
    "brsf",
)


def build_layers_model(rules=LAYER_RULES, exclude=(), **layer_kwargs):
    """A trainable stem, then every keras_fa layer type side by side.

    Layer i (in `LAYER_NAMES` order) uses `rules[i % len(rules)]`. The stem
    (a plain Dense layer) comes first so that every layer's input gradient,
    which crosses its feedback, reaches a weight: training then depends on
    each layer's feedback state. The layers named in `exclude` are left out;
    `layer_kwargs` go to every keras_fa layer. No seeds, as in `build_model`.
    """
    import keras

    import keras_fa

    def kwargs(i):
        name = LAYER_NAMES[i]
        return dict(feedback=rules[i % len(rules)], name=name, **layer_kwargs)

    image = keras.Input(INPUT_SHAPE)
    stem = keras.layers.Dense(2, activation="tanh", name="stem")(image)
    series = keras.layers.Reshape((36, 2))(stem)
    volume = keras.layers.Reshape((3, 4, 6, 1))(stem)
    outputs = [
        keras_fa.FAEinsumDense(
            "abc,cd->abd", (36, 3), bias_axes="d", **kwargs(0)
        )(series),
        keras_fa.FAConv3D(2, 2, **kwargs(1))(volume),
        keras_fa.FADepthwiseConv1D(3, depth_multiplier=2, **kwargs(2))(series),
        keras_fa.FADepthwiseConv2D(3, **kwargs(3))(stem),
        keras_fa.FASeparableConv1D(3, 3, **kwargs(4))(series),
        keras_fa.FASeparableConv2D(3, 3, **kwargs(5))(stem),
        keras_fa.FAConv1DTranspose(2, 3, strides=2, **kwargs(6))(series),
        keras_fa.FAConv2DTranspose(2, 3, **kwargs(7))(stem),
        keras_fa.FAConv3DTranspose(1, 2, **kwargs(8))(volume),
        keras_fa.FAMultiHeadAttention(2, 3, **kwargs(9))(series, series),
        keras_fa.FAGroupQueryAttention(2, 2, 1, **kwargs(10))(series, series),
    ]
    flat = [
        keras.layers.Flatten()(x)
        for name, x in zip(LAYER_NAMES, outputs)
        if name not in exclude
    ]
    return keras.Model(image, keras.layers.Concatenate()(flat))


def all_variables(model):
    """Returns `{path: value}` of all variables of `model`."""
    import keras

    return {v.path: keras.ops.convert_to_numpy(v) for v in model.variables}


def feedback_variables(model):
    """Returns `{"<layer>/<variable>": value}` of all feedback variables."""
    import keras

    values = {}
    for layer in model.layers:
        for variable in layer.variables:
            if variable.path.split("/", 1)[1].startswith("feedback"):
                values[f"{layer.name}/{variable.name}"] = (
                    keras.ops.convert_to_numpy(variable)
                )
    return values


def main(out_dir):
    import keras

    backend = keras.backend.backend()
    model = build_model()
    model.save(os.path.join(out_dir, f"{backend}.keras"))
    np.savez(
        os.path.join(out_dir, f"{backend}_feedback.npz"),
        **feedback_variables(model),
    )
    np.save(
        os.path.join(out_dir, f"{backend}_predictions.npy"),
        keras.ops.convert_to_numpy(model(inputs())),
    )
    model = build_layers_model()
    model.save(os.path.join(out_dir, f"{backend}_layers.keras"))
    np.savez(
        os.path.join(out_dir, f"{backend}_layers_variables.npz"),
        **all_variables(model),
    )
    np.save(
        os.path.join(out_dir, f"{backend}_layers_predictions.npy"),
        keras.ops.convert_to_numpy(model(inputs())),
    )


if __name__ == "__main__":
    main(sys.argv[1])
