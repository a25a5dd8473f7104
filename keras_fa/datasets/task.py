"""`Task`: a classification data set with its kept classes, ready for fit.

A task keeps some classes of a data set and numbers them `0 .. k - 1`; its
source (the arrays of an offline set, or a TFDS builder) gives each split
as a `tf.data` pipeline, which `Task` shuffles and batches.
"""

import dataclasses

import numpy as np

from keras_fa._validation import check_bool
from keras_fa._validation import check_positive_integer
from keras_fa._validation import check_seed


@dataclasses.dataclass(frozen=True)
class Task:
    """A classification data set, ready for `model.fit` on any backend.

    Made by `load`. Labels of the task run over `0 .. num_classes - 1`;
    label `i` is the original class `classes[i]`.

    Attributes:
        name: the name given to `load`, e.g. `"mnist"`.
        input_shape: the shape of one example, e.g. `(28, 28, 1)`.
        num_classes: the number of classes kept.
        classes: the original class ids kept, in the order of the task's
            labels.
        class_names: the names of those classes (the ids as strings where
            the data set has no names).
        num_train: the number of training examples of the kept classes.
        num_test: the number of test examples of the kept classes.

    Example:

    >>> task = keras_fa.datasets.load("digits", classes=3)
    >>> task.input_shape, task.num_classes, task.classes
    ((64,), 3, (5, 6, 9))
    >>> model.fit(task.train(32), validation_data=task.test(256), epochs=2)
    """

    name: str
    input_shape: tuple
    num_classes: int
    classes: tuple
    class_names: tuple
    num_train: int
    num_test: int
    _source: object = dataclasses.field(repr=False, compare=False)

    def train(self, batch_size, shuffle=True, seed=0, repeat=False):
        """Returns the training set as batched `(x, y)` in a `tf.data` pipeline.

        `x` is float32 (images scaled from `[0, 255]` to `[0, 1]`), `y`
        int32. The last batch of an epoch may be smaller than `batch_size`.
        Shuffling uses a buffer as large as the set, so it is a uniform
        permutation, and draws a new one each time the dataset is iterated
        (each epoch of `model.fit`). The order is a function of `seed` and
        of TensorFlow's global seed if one is set
        (`keras.utils.set_random_seed` sets it): fix both to repeat a run.

        Args:
            batch_size: examples per batch, a positive integer.
            shuffle: whether to shuffle the examples, a bool.
            seed: integer seed of the shuffling, in `[0, 2**32)`.
            repeat: whether to repeat the set without end (reshuffled each
                pass), a bool; batches then run across epoch boundaries.

        Returns:
            A `tf.data.Dataset`, prefetched.
        """
        batch_size = check_positive_integer("batch_size", batch_size)
        shuffle = check_bool("shuffle", shuffle)
        seed = check_seed("seed", seed)
        repeat = check_bool("repeat", repeat)
        dataset = self._source.dataset("train")
        if shuffle:
            dataset = dataset.shuffle(
                self.num_train, seed=seed, reshuffle_each_iteration=True
            )
        if repeat:
            dataset = dataset.repeat()
        return self._source.finish(dataset, batch_size)

    def test(self, batch_size):
        """Returns the test set as batched `(x, y)`, in a fixed order.

        Args:
            batch_size: examples per batch, a positive integer.

        Returns:
            A `tf.data.Dataset` of float32 `x` and int32 `y`, prefetched; the
            last batch may be smaller than `batch_size`.
        """
        batch_size = check_positive_integer("batch_size", batch_size)
        return self._source.finish(self._source.dataset("test"), batch_size)

    def arrays(self, split):
        """Returns one split as NumPy arrays `(x, y)`, in a fixed order.

        The values are those `train(shuffle=False)` and `test` give, in one
        float32 array and one int32 array. A TFDS set is read through its
        pipeline, so this holds the whole split in memory.

        Args:
            split: `"train"` or `"test"` (in any case).
        """
        if not isinstance(split, str) or split.lower() not in (
            "train",
            "test",
        ):
            raise ValueError(
                f"`split` must be 'train' or 'test'. Received: split={split!r}"
            )
        return self._source.arrays(split.lower())


def choose_classes(classes, num_classes, seed):
    """Returns the kept original class ids as a tuple of ints.

    Args:
        classes: `load`'s argument: None, a number of classes to draw, or
            a sequence of class ids.
        num_classes: the number of classes of the data set.
        seed: the seed of the draw.
    """
    if classes is None:
        return tuple(range(num_classes))
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        return _draw_classes(classes, num_classes, seed)
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise ValueError(
            "`classes` must be None, a number of classes or a sequence of "
            f"class ids. Received: classes={classes!r}"
        )
    return _check_class_ids(classes, num_classes)


def _draw_classes(count, num_classes, seed):
    if not 2 <= count <= num_classes:
        raise ValueError(
            f"`classes` as a number must be between 2 and {num_classes}, "
            f"the number of classes of the data set. "
            f"Received: classes={count}"
        )
    chosen = np.random.default_rng(seed).choice(
        num_classes, size=int(count), replace=False
    )
    return tuple(int(c) for c in np.sort(chosen))


def _check_class_ids(classes, num_classes):
    chosen = list(classes)
    bad = [
        c
        for c in chosen
        if not isinstance(c, (int, np.integer))
        or isinstance(c, bool)
        or not 0 <= c < num_classes
    ]
    if bad:
        raise ValueError(
            f"`classes` must hold class ids in [0, {num_classes}). "
            f"Unknown: {bad}"
        )
    chosen = tuple(int(c) for c in chosen)
    if len(set(chosen)) != len(chosen):
        duplicates = sorted({c for c in chosen if chosen.count(c) > 1})
        raise ValueError(
            f"`classes` must not repeat a class id. Repeated: {duplicates}"
        )
    if len(chosen) < 2:
        raise ValueError(
            "`classes` must name at least 2 classes, and at most "
            f"{num_classes}. Received: classes={classes!r}"
        )
    return chosen


def label_table(classes, num_classes):
    """Returns the task label of each original label: an int32 array of
    `num_classes` entries, -1 for a class not kept."""
    table = np.full(num_classes, -1, dtype="int32")
    table[list(classes)] = np.arange(len(classes), dtype="int32")
    return table


def import_tensorflow():
    """Returns the `tensorflow` module, or raises how to install it."""
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            "keras_fa.datasets.load builds tf.data pipelines and needs "
            "tensorflow, on every Keras backend: `pip install tensorflow-cpu` "
            "(or `pip install keras_fa[tensorflow]`)."
        ) from error
    return tf
