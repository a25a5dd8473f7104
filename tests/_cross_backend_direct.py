"""Direct-feedback models (dfa and drtp; an MLP, a small CNN and a functional
model with (batch, time, classes) logits, a per-position and a pooled tap)
saved under one backend and loaded under another.

`tests/test_direct.py` saves them under the active backend, then runs this
file under the next backend (tensorflow -> jax -> torch -> tensorflow):

    KERAS_BACKEND=jax python tests/_cross_backend_direct.py OUT_DIR tensorflow

which loads and checks the tensorflow files in OUT_DIR, then saves its own
for the test to check. Over the three backends' test runs every backend
loads the files of the other two.

`save` writes `OUT_DIR/<backend>_<key>.keras` for each key of `KEYS`, and
`OUT_DIR/<backend>.npz` with each model's direct feedback matrices
(`<key>/B<i>`) and its predictions on `batch(model)` (`<key>/predictions`).
"""

import os
import sys

import numpy as np

RULES = ("dfa", "drtp")
KINDS = ("mlp", "cnn", "seq")
KEYS = tuple(f"{rule}_{kind}" for rule in RULES for kind in KINDS)
NEXT_BACKEND = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}


def originals():
    """An MLP and a CNN whose first tap is a whole conv activation, and a
    functional model with logits (batch, 3, 3): a tap of shape (batch, 3, 5)
    fed position by position and a pooled tap of shape (batch, 4) fed
    through the flattened logits. Two hidden blocks each."""
    import keras

    mlp = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="relu"),
            keras.layers.Dense(4, activation="tanh"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    cnn = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(3, 3, activation="relu"),
            keras.layers.Conv2D(2, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    inputs = keras.Input((3, 2))
    h1 = keras.layers.Dense(5, activation="relu", name="h1")(inputs)
    pooled = keras.layers.GlobalAveragePooling1D()(h1)
    h2 = keras.layers.Dense(4, activation="tanh", name="h2")(pooled)
    logits = keras.layers.Dense(3)(h1) + keras.ops.expand_dims(
        keras.layers.Dense(3)(h2), 1
    )
    outputs = keras.layers.Activation("softmax")(logits)
    seq = keras.Model(inputs, outputs)
    return mlp, cnn, seq


def direct_model(kind, original, rule):
    """`original` (of `KINDS[i]`) trained by `rule`."""
    import keras_fa

    # No seed: a loader that redrew B would not match the file.
    taps = ["h1", "h2"] if kind == "seq" else None
    return keras_fa.direct_feedback(original, rule, taps=taps)


def batch(model, seed=0):
    """Fixed inputs and sparse labels for `model`, the same on every
    backend."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, *model.input_shape[1:])).astype("float32")
    labels = (8, *model.output_shape[1:-1])
    return x, np.arange(np.prod(labels)).reshape(labels) % 3


def direct_kernels(model):
    import keras

    import keras_fa

    (head,) = [
        layer
        for layer in model.layers
        if isinstance(layer, keras_fa.DirectFeedback)
    ]
    return head, [keras.ops.convert_to_numpy(b) for b in head.feedback_kernels]


def save(out_dir):
    """Saves the models of `KEYS` under the active backend."""
    import keras

    backend = keras.backend.backend()
    arrays = {}
    for rule in RULES:
        for kind, original in zip(KINDS, originals()):
            key = f"{rule}_{kind}"
            model = direct_model(kind, original, rule)
            model.save(os.path.join(out_dir, f"{backend}_{key}.keras"))
            for i, b in enumerate(direct_kernels(model)[1]):
                arrays[f"{key}/B{i}"] = b
            arrays[f"{key}/predictions"] = keras.ops.convert_to_numpy(
                model(batch(model)[0])
            )
    np.savez(os.path.join(out_dir, f"{backend}.npz"), **arrays)


def check(out_dir, saved_under):
    """Loads the models saved under `saved_under`: the same B, bit for bit,
    and the same predictions."""
    import keras

    import keras_fa

    where = f"saved under {saved_under}, loaded under {keras.backend.backend()}"
    saved = np.load(os.path.join(out_dir, f"{saved_under}.npz"))
    for key in KEYS:
        model = keras.models.load_model(
            os.path.join(out_dir, f"{saved_under}_{key}.keras")
        )
        assert type(model) is keras_fa.DirectFeedbackModel, (key, where)
        head, kernels = direct_kernels(model)
        assert head.feedback == key.split("_")[0], (key, where)
        assert len(kernels) == 2, (key, where)
        for i, b in enumerate(kernels):
            expected = saved[f"{key}/B{i}"]
            assert b.dtype == expected.dtype, (key, where)
            assert np.array_equal(b, expected), (key, i, where)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(model(batch(model)[0])),
            saved[f"{key}/predictions"],
            rtol=0,
            atol=1e-5,
            err_msg=f"{key} {where}",
        )


if __name__ == "__main__":
    check(sys.argv[1], saved_under=sys.argv[2])
    save(sys.argv[1])
