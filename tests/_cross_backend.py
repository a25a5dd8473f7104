"""Saves a keras_fa model with every rule under the active backend.

Run by `tests/test_saving.py` as a subprocess, once per other backend:

    KERAS_BACKEND=jax python tests/_cross_backend.py OUT_DIR

writes `OUT_DIR/<backend>.keras`, the feedback variables it holds
(`OUT_DIR/<backend>_feedback.npz`, keyed `<layer>/<variable>`) and the model's
predictions on `inputs()` (`OUT_DIR/<backend>_predictions.npy`).
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


if __name__ == "__main__":
    main(sys.argv[1])
