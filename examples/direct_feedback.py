"""Direct feedback alignment (dfa), drtp and the shallow control on digits.

Two ways to build a direct-feedback model:

1. `keras_fa.direct_feedback(model, "dfa")` rewires a Sequential model of any
   layers (here a small CNN with pooling and batch normalization);
2. by hand in the functional API: cut each hidden activation from the layers
   above with `keras_fa.BlockGradient` and hand it to `keras_fa.DirectFeedback`
   together with the logits.

    python examples/direct_feedback.py
    KERAS_BACKEND=jax python examples/direct_feedback.py
"""

import keras

import keras_fa
from keras_fa import datasets


def cnn():
    """A small CNN for 8x8 digits, in plain Keras layers."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(32, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def functional_mlp(feedback):
    """The same recipe by hand: taps, BlockGradient, DirectFeedback."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    h1 = keras.layers.Dense(128, activation="relu")(x)
    h2 = keras.layers.Dense(128, activation="relu")(
        keras_fa.BlockGradient()(h1)
    )
    logits = keras.layers.Dense(10)(keras_fa.BlockGradient()(h2))
    outputs = keras_fa.DirectFeedback(feedback, seed=0)([logits, h1, h2])
    # DirectFeedbackModel gives drtp the targets; for dfa and shallow a plain
    # keras.Model would do as well.
    return keras_fa.DirectFeedbackModel(inputs, outputs)


def main():
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    x_train = x_train.reshape(-1, 8, 8, 1)
    x_test = x_test.reshape(-1, 8, 8, 1)
    print("| model | rule | test accuracy |")
    print("|---|---|---|")
    for feedback in ("bp", "dfa", "drtp", "shallow"):
        for name in ("cnn", "functional mlp"):
            keras.utils.set_random_seed(0)
            if name == "cnn":
                model = cnn()
                if feedback != "bp":
                    model = keras_fa.direct_feedback(model, feedback, seed=0)
                loss = "sparse_categorical_crossentropy"
            else:
                if feedback == "bp":
                    continue
                model = functional_mlp(feedback)
                loss = keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                )
            model.compile(
                keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"]
            )
            model.fit(x_train, y_train, epochs=20, batch_size=32, verbose=0)
            _, accuracy = model.evaluate(x_test, y_test, verbose=0)
            print(f"| {name} | {feedback} | {accuracy:.3f} |", flush=True)


if __name__ == "__main__":
    main()
