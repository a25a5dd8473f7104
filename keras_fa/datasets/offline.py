"""Data sets that need no network and no files, as NumPy arrays.

`load_digits` and `load_mnist1d` return arrays in the layout of
`keras.datasets`: `(x_train, y_train), (x_test, y_test)`, with float32
features and integer labels in `[0, 10)`; `load_stdlib_text` returns a
character-level language-modelling task. `offline_task` makes the `Task`
of the two classification sets, which `load` returns for them.

scikit-learn and mnist1d are imported only when a loader needs them.
"""

import functools
import math
import random

import numpy as np

from keras_fa._validation import check_fraction
from keras_fa._validation import check_integer
from keras_fa._validation import check_seed
from keras_fa.datasets.task import Task
from keras_fa.datasets.task import choose_classes
from keras_fa.datasets.task import import_tensorflow
from keras_fa.datasets.task import label_table

# The seed `mnist1d.data.get_dataset_args()` uses: with it, `load_mnist1d`
# gives the standard MNIST-1D split that published accuracies refer to.
MNIST1D_STANDARD_SEED = 42

# scikit-learn's digits: examples and classes. A stratified split needs at
# least one example of each class in each part.
_DIGITS_EXAMPLES = 1797
_DIGITS_CLASSES = 10


def load_digits(test_fraction=0.25, seed=0):
    """Loads scikit-learn's 8x8 handwritten digits, split into train and test.

    The 1797 images ship with scikit-learn, so nothing is downloaded. Pixels
    are scaled from `[0, 16]` to `[0, 1]` and flattened to 64 features. The
    split is stratified: every class keeps its share in both parts.

    Args:
        test_fraction: the fraction of examples put in the test set, in
            `(0, 1)`, leaving at least 10 examples (one per class) in each
            part: `9 / 1797 < test_fraction <= 1787 / 1797`.
        seed: integer seed of the split, in `[0, 2**32)`; the same seed
            gives the same split.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: float32 arrays of shape
        `(n, 64)` and int64 labels of shape `(n,)` in `[0, 10)`.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = keras_fa.datasets.load_digits()
    >>> x_train.shape, x_test.shape
    ((1347, 64), (450, 64))
    """
    test_fraction = check_fraction("test_fraction", test_fraction)
    # How train_test_split sizes the parts.
    n_test = math.ceil(test_fraction * _DIGITS_EXAMPLES)
    if min(n_test, _DIGITS_EXAMPLES - n_test) < _DIGITS_CLASSES:
        raise ValueError(
            "`test_fraction` must leave at least 10 of the 1797 examples "
            "(one per class) in each part of the stratified split: "
            "between 0 and 1, with 9/1797 < test_fraction <= 1787/1797 "
            f"(about 0.0051 to 0.9944). Received: test_fraction="
            f"{test_fraction!r}, which leaves {n_test} test and "
            f"{_DIGITS_EXAMPLES - n_test} training examples"
        )
    seed = check_seed("seed", seed)
    from sklearn import datasets
    from sklearn import model_selection

    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return (x_train, y_train), (x_test, y_test)


#: The standard-library modules whose docstrings form `load_stdlib_text`'s
#: corpus: English prose that ships with every Python.
STDLIB_TEXT_MODULES = (
    "argparse",
    "collections",
    "csv",
    "dataclasses",
    "functools",
    "itertools",
    "json",
    "logging",
    "pathlib",
    "re",
    "string",
    "textwrap",
    "unittest",
)


def stdlib_text():
    """Returns the docstrings of `STDLIB_TEXT_MODULES` (of each module and
    of its public classes and functions) as one printable-ASCII string."""
    import importlib
    import inspect

    parts = []
    for name in STDLIB_TEXT_MODULES:
        module = importlib.import_module(name)
        members = [module] + [
            value
            for key, value in sorted(vars(module).items())
            if not key.startswith("_")
            and (inspect.isclass(value) or inspect.isfunction(value))
        ]
        for member in members:
            doc = inspect.getdoc(member)
            if doc:
                parts.append(doc)
    text = "\n\n".join(parts)
    return "".join(c if 32 <= ord(c) < 127 or c == "\n" else " " for c in text)


def load_stdlib_text(sequence_length=32, test_fraction=0.1):
    """Loads a character-level language-modelling task that needs no
    network: the docstrings of Python's standard library (`stdlib_text`).

    Characters are mapped to ids in `[0, 96)`: printable ASCII (32-126) to
    `ord(c) - 32 + 1`, newline to 0. The text is cut into windows of
    `sequence_length + 1` characters, one after the other; each gives an
    input (its first `sequence_length` ids) and a target (the next id at
    every position). The last `test_fraction` of the windows is the test
    set. The corpus depends on the Python version (its docstrings).

    Args:
        sequence_length: characters per example, an int >= 2 that leaves
            at least two windows in the corpus.
        test_fraction: the fraction of windows put in the test set, in
            `(0, 1)`, leaving at least one window for training.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: int32 arrays of shape
        `(n, sequence_length)`, targets shifted by one character.

    Example:

    >>> (x, y), _ = keras_fa.datasets.load_stdlib_text(sequence_length=64)
    >>> x.shape[1], int(x.max()) < 96
    (64, True)
    """
    sequence_length = check_integer(
        "sequence_length", sequence_length, minimum=2
    )
    test_fraction = check_fraction("test_fraction", test_fraction)
    codes = np.frombuffer(stdlib_text().encode("ascii"), dtype=np.uint8)
    windows = len(codes) // (sequence_length + 1)
    if windows < 2:
        raise ValueError(
            "`sequence_length` must leave at least two windows (one for "
            f"training, one for testing) in the corpus of {len(codes)} "
            "characters: an int from 2 to "
            f"{len(codes) // 2 - 1}. Received: "
            f"sequence_length={sequence_length!r}"
        )
    n_test = max(1, int(round(windows * test_fraction)))
    if n_test >= windows:
        raise ValueError(
            "`test_fraction` must leave at least one of the "
            f"{windows} windows of sequence_length={sequence_length} for "
            f"training: between 0 and {(windows - 0.5) / windows:.4g}. "
            f"Received: test_fraction={test_fraction!r}"
        )
    ids = np.where(codes == 10, 0, codes.astype(np.int32) - 31)
    ids = ids[: windows * (sequence_length + 1)].reshape(windows, -1)
    x, y = ids[:, :-1], ids[:, 1:]
    return (x[:-n_test], y[:-n_test]), (x[-n_test:], y[-n_test:])


#: The number of ids of `load_stdlib_text`: newline and printable ASCII.
STDLIB_TEXT_VOCABULARY = 96


def load_mnist1d(seed=MNIST1D_STANDARD_SEED):
    """Generates the MNIST-1D data set (Greydanus & Kobak, 2020).

    MNIST-1D is a procedurally generated stand-in for MNIST: ten 1-D digit
    templates, padded, shifted, scaled, sheared and made noisy, as 40
    features. It is built with `mnist1d.data.make_dataset` in about 4 s; no
    file is downloaded, read or written. The default seed gives the standard
    data set (the one the MNIST-1D paper reports ~68% MLP test accuracy on);
    another seed gives a new draw of the same distribution. The global
    `random` and `numpy.random` states, which mnist1d reseeds, are restored
    afterwards.

    Args:
        seed: integer seed of the generator, in `[0, 2**32)`. The default,
            42, is the seed of the standard MNIST-1D data set.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: float32 arrays of shape
        `(4000, 40)` and `(1000, 40)` and int64 labels in `[0, 10)`.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = keras_fa.datasets.load_mnist1d()
    >>> x_train.shape, x_test.shape
    ((4000, 40), (1000, 40))
    """
    arrays = _make_mnist1d(check_seed("seed", seed))
    return tuple((x.copy(), y.copy()) for x, y in arrays)


@functools.lru_cache(maxsize=4)
def _make_mnist1d(seed):
    # Cached because generation takes seconds; callers get copies.
    from mnist1d import data as mnist1d_data

    args = mnist1d_data.get_dataset_args()
    args.seed = seed
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    try:
        # make_dataset only generates; get_dataset would download and write
        # a pickle into the working directory.
        dataset = mnist1d_data.make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return tuple(
        (dataset[x].astype("float32"), dataset[y].astype("int64"))
        for x, y in (("x", "y"), ("x_test", "y_test"))
    )


class ArraySource:
    """The splits of an offline set, held as NumPy arrays."""

    def __init__(self, splits):
        self._splits = splits

    def arrays(self, split):
        x, y = self._splits[split]
        return x.copy(), y.copy()

    def dataset(self, split):
        tf = import_tensorflow()
        return tf.data.Dataset.from_tensor_slices(self._splits[split])

    def finish(self, dataset, batch_size):
        tf = import_tensorflow()
        dataset = dataset.batch(batch_size, drop_remainder=False)
        return dataset.prefetch(tf.data.AUTOTUNE)


def offline_task(name, classes, seed):
    """Returns the `Task` of `"digits"` or `"mnist1d"` (their default
    split), keeping `classes` as `load` takes them."""
    num_all = 10
    classes = choose_classes(classes, num_all, seed)
    loader = load_digits if name == "digits" else load_mnist1d
    splits = loader()
    table = label_table(classes, num_all)
    kept = {}
    for split, (x, y) in zip(("train", "test"), splits):
        mask = table[y] >= 0
        kept[split] = (
            np.ascontiguousarray(x[mask], dtype="float32"),
            table[y[mask]],
        )
    return Task(
        name=name,
        input_shape=tuple(splits[0][0].shape[1:]),
        num_classes=len(classes),
        classes=classes,
        class_names=tuple(str(c) for c in classes),
        num_train=len(kept["train"][1]),
        num_test=len(kept["test"][1]),
        _source=ArraySource(kept),
    )
