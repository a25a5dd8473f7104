"""Tests of keras_fa.datasets.task: `Task`'s pipelines and arguments, and
the choice of classes (`load`'s `classes`)."""

import functools

import keras
import numpy as np
import pytest

import keras_fa
from keras_fa import datasets
from keras_fa.datasets import task as task_module
from tests._datasets import images
from tests._datasets import prepared_tfds  # noqa: F401 (a fixture)
from tests._datasets import refuses
from tests._datasets import tfds_mock  # noqa: F401 (a fixture)


@pytest.mark.parametrize("name", ["mnist", "digits"])
def test_model_fit_on_task(name, request):
    if name == "mnist":
        request.getfixturevalue("prepared_tfds")

    task = datasets.load(name, classes=3)
    model = keras.Sequential(
        [
            keras.Input(task.input_shape),
            keras.layers.Flatten(),
            keras_fa.FADense(16, activation="relu"),
            keras_fa.FADense(task.num_classes, activation="softmax"),
        ]
    )
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(
        task.train(32),
        validation_data=task.test(64),
        epochs=2,
        verbose=0,
    )
    assert len(history.history["loss"]) == 2
    assert np.all(np.isfinite(history.history["val_loss"]))
    loss, accuracy = model.evaluate(task.test(64), verbose=0)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0


CLASSES_BAD_ARGUMENTS = [
    (1, "between 2 and 10"),
    (11, "between 2 and 10"),
    ([3], "at least 2"),
    ([0, 0, 1], r"Repeated: \[0\]"),
    ([0, 10], r"\[0, 10\)"),
    ([-1, 2], r"\[0, 10\)"),
    ([1.0, 2], r"\[0, 10\)"),
    ("12", "sequence of class ids"),
    (2.5, "sequence of class ids"),
]


def test_choose_classes_refuses_bad_classes():
    for classes, match in CLASSES_BAD_ARGUMENTS:
        with pytest.raises(ValueError, match=match):
            task_module.choose_classes(classes, 10, seed=0)
        with pytest.raises(ValueError, match=match):
            datasets.load("digits", classes=classes)


def test_choose_classes():
    choose = task_module.choose_classes
    assert choose(None, 4, seed=0) == (0, 1, 2, 3)
    assert choose([3, np.int64(1)], 4, seed=0) == (3, 1)
    drawn = choose(np.int64(3), 10, seed=5)
    assert drawn == choose(3, 10, seed=5) == tuple(sorted(drawn))
    assert len(set(drawn)) == 3 and all(type(c) is int for c in drawn)
    assert choose(10, 10, seed=1) == tuple(range(10))
    np.testing.assert_array_equal(
        task_module.label_table((3, 1), 4), [-1, 1, -1, 0]
    )


def test_task_refuses_bad_batch_sizes_seeds_and_splits():
    task = datasets.load("digits")
    for batch_size in (0, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            task.train(batch_size)
    with pytest.raises(ValueError, match="batch_size"):
        task.test(-1)
    with pytest.raises(ValueError, match="seed"):
        task.train(8, seed="a")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        task.arrays("validation")


def test_task_train_takes_only_booleans():
    task = datasets.load("digits")
    # Any truthy value used to switch shuffling or repetition on.
    for argument in ("shuffle", "repeat"):
        for value in ("no", "False", 0, 1, None):
            refuses(
                functools.partial(task.train, 4, **{argument: value}),
                f"`{argument}` must be True or False",
                repr(value),
            )
    x_train, _ = task.arrays("train")
    unshuffled = task.train(2000, shuffle=np.False_, repeat=np.False_)
    np.testing.assert_array_equal(images(unshuffled), x_train)
    shuffled = images(task.train(2000, shuffle=np.True_))
    assert not np.array_equal(shuffled, x_train)
    for seed in (-1, 2**32):
        refuses(functools.partial(task.train, 4, seed=seed), "seed", str(seed))


def test_task_arrays_split_is_case_insensitive():
    task = datasets.load("digits")
    for got, expected in (("TRAIN", "train"), ("Test", "test")):
        for a, b in zip(task.arrays(got), task.arrays(expected)):
            np.testing.assert_array_equal(a, b)
    for split in (0, None, "val"):
        refuses(functools.partial(task.arrays, split), "split", repr(split))
