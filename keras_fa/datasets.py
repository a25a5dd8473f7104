"""Classification data sets for benchmarks: offline arrays and TFDS tasks.

`load(name)` returns a `Task`: a data set with its shapes, classes and sizes,
whose `train` and `test` methods give batched `tf.data` pipelines that feed
`model.fit` on every Keras backend. It covers the TFDS image sets in
`TFDS_DATASETS`, read from a TFDS data directory, and the two sets in
`OFFLINE_DATASETS`, which need no network and no files.

`load_digits` and `load_mnist1d` return NumPy arrays in the layout of
`keras.datasets`: `(x_train, y_train), (x_test, y_test)`, with float32
features and integer labels in `[0, 10)`.

scikit-learn, mnist1d, tensorflow and tensorflow-datasets are imported only
when a loader needs them (`pip install keras_fa[data]` and a tensorflow such
as `tensorflow-cpu`), so importing keras_fa does not import tensorflow.
"""

import contextlib
import dataclasses
import functools
import math
import os
import random
import shutil
import socket
import threading
import time
import urllib.parse

import numpy as np

from keras_fa._validation import check_bool
from keras_fa._validation import check_integer
from keras_fa._validation import is_integer
from keras_fa._validation import is_real

# The seed `mnist1d.data.get_dataset_args()` uses: with it, `load_mnist1d`
# gives the standard MNIST-1D split that published accuracies refer to.
MNIST1D_STANDARD_SEED = 42

# Names `load` accepts. The TFDS sets are read from a TFDS data directory
# (prepared with `tfds build`); the offline sets are generated in memory.
TFDS_DATASETS = (
    "mnist",
    "fashion_mnist",
    "kmnist",
    "emnist/balanced",
    "cifar10",
    "cifar100",
)
OFFLINE_DATASETS = ("digits", "mnist1d")

# How long `load` waits for a connection to the hosts a TFDS set downloads
# from before it calls the data unavailable, instead of entering TFDS's
# retry loop (about 200 s per file without a network).
NETWORK_TIMEOUT_SECONDS = 3.0

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
    test_fraction = _check_test_fraction(test_fraction)
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
    seed = _check_seed(seed)
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
    test_fraction = _check_test_fraction(test_fraction)
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
    arrays = _make_mnist1d(_check_seed(seed))
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


class DatasetUnavailableError(RuntimeError):
    """A TFDS data set is not prepared locally and cannot be downloaded.

    Raised by `load` within seconds, instead of waiting on TFDS's download
    retries, when the data is missing from the data directory and
    `download=False` or the network does not answer. The message names the
    data set, the directory searched and how to provide the data.
    """


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
        batch_size = _check_batch_size(batch_size)
        shuffle = check_bool("shuffle", shuffle)
        seed = _check_seed(seed)
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
        batch_size = _check_batch_size(batch_size)
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


def load(name, *, data_dir=None, classes=None, seed=0, download=None):
    """Returns a `Task` for the classification data set `name`.

    The TFDS sets (`TFDS_DATASETS`: mnist, fashion_mnist, kmnist,
    emnist/balanced, cifar10, cifar100) are read with `tfds.builder(name,
    data_dir=data_dir)`. When they are not prepared there, `load` downloads
    and prepares them if the hosts they come from answer within
    `NETWORK_TIMEOUT_SECONDS` (or `download=True`), and raises
    `DatasetUnavailableError` otherwise, in seconds. Files left by a download
    that fails are removed. Each pipeline caches its decoded uint8 images
    in memory on its first pass (about 55 MB for MNIST, 180 MB for CIFAR),
    and the training shuffle buffer holds another copy of its set. EMNIST
    images, stored transposed in TFDS as in the original files, are
    transposed back so that letters stand upright.

    The offline sets (`OFFLINE_DATASETS`) are `load_digits()` (64 features
    in `[0, 1]`) and the standard `load_mnist1d()` (40 features, as
    generated) with their default split; `data_dir` and `download` do not
    apply to them.

    Args:
        name: one of `TFDS_DATASETS + OFFLINE_DATASETS`, in any case
            (`"MNIST"` is `"mnist"`); `Task.name` is the lower-case name.
        data_dir: TFDS data directory (a str or path, not a file);
            `None` means `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
        classes: `None` for all classes; an integer `k` for `k` classes drawn
            at random with `seed` (sorted); or a sequence of class ids.
            Examples of other classes are dropped and labels renumbered
            `0 .. k - 1` in the order of `Task.classes`.
        seed: integer seed of the class draw, in `[0, 2**32)`; it does not
            change the splits.
        download: `None` to download missing TFDS data when the network
            answers; `True` to try regardless (errors propagate); `False` to
            use prepared data only.

    Returns:
        A `Task`.

    Raises:
        ValueError: for an unknown name or any other bad argument.
        DatasetUnavailableError: when TFDS data is missing and cannot be
            downloaded.

    Example:

    >>> task = keras_fa.datasets.load("mnist", classes=[3, 8])
    >>> task.input_shape, task.num_classes
    ((28, 28, 1), 2)
    """
    known = TFDS_DATASETS + OFFLINE_DATASETS
    if not isinstance(name, str) or name.lower() not in known:
        raise ValueError(
            f"Unknown data set {name!r}. Known: TFDS sets "
            f"{', '.join(TFDS_DATASETS)}; offline sets "
            f"{', '.join(OFFLINE_DATASETS)} (in any case)."
        )
    name = name.lower()
    data_dir = _check_data_dir(data_dir)
    if download is not None:
        if not isinstance(download, (bool, np.bool_)):
            raise ValueError(
                "`download` must be None, True or False. "
                f"Received: download={download!r}"
            )
        download = bool(download)
    seed = _check_seed(seed)
    if name in OFFLINE_DATASETS:
        return _load_offline(name, classes, seed)
    return _load_tfds(name, data_dir, classes, seed, download)


def _check_seed(seed):
    # The seeds NumPy's and scikit-learn's generators take.
    if not is_integer(seed) or not 0 <= seed < 2**32:
        raise ValueError(
            f"`seed` must be an integer in [0, 2**32). Received: seed={seed!r}"
        )
    return int(seed)


def _check_test_fraction(test_fraction):
    if not is_real(test_fraction) or not 0.0 < test_fraction < 1.0:
        raise ValueError(
            "`test_fraction` must be a number between 0 and 1 (exclusive). "
            f"Received: test_fraction={test_fraction!r}"
        )
    return float(test_fraction)


def _check_data_dir(data_dir):
    """Returns `data_dir`, or raises if it cannot be a directory."""
    if data_dir is None:
        return None
    path = data_dir
    if isinstance(data_dir, os.PathLike):
        path = os.fspath(data_dir)
    if not isinstance(path, str) or not path:
        raise ValueError(
            "`data_dir` must be None or the path of a directory (a non-empty "
            f"str or os.PathLike). Received: data_dir={data_dir!r}"
        )
    if "://" in path:  # A remote file system of TFDS (gs://...).
        return path
    # The nearest existing directory above: a file there blocks the path.
    full = os.path.abspath(os.path.expanduser(path))
    existing = full
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is" if existing == full else "runs through"
        raise ValueError(
            "`data_dir` must be a directory, or a path where one can be "
            f"made; it {where} the file {existing}. Received: "
            f"data_dir={data_dir!r}"
        )
    return path


def _check_batch_size(batch_size):
    if (
        not isinstance(batch_size, (int, np.integer))
        or isinstance(batch_size, bool)
        or batch_size < 1
    ):
        raise ValueError(
            "`batch_size` must be a positive integer. "
            f"Received: batch_size={batch_size!r}"
        )
    return int(batch_size)


def _choose_classes(classes, num_classes, seed):
    """Returns the kept original class ids as a tuple of ints."""
    if classes is None:
        return tuple(range(num_classes))
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        if not 2 <= classes <= num_classes:
            raise ValueError(
                f"`classes` as a number must be between 2 and {num_classes}, "
                f"the number of classes of the data set. "
                f"Received: classes={classes}"
            )
        chosen = np.random.default_rng(seed).choice(
            num_classes, size=int(classes), replace=False
        )
        return tuple(int(c) for c in np.sort(chosen))
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise ValueError(
            "`classes` must be None, a number of classes or a sequence of "
            f"class ids. Received: classes={classes!r}"
        )
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


def _label_table(classes, num_classes):
    # Original label -> task label, -1 for a dropped class.
    table = np.full(num_classes, -1, dtype="int32")
    table[list(classes)] = np.arange(len(classes), dtype="int32")
    return table


def _import_tensorflow():
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            "keras_fa.datasets.load builds tf.data pipelines and needs "
            "tensorflow, on every Keras backend: `pip install tensorflow-cpu` "
            "(or `pip install keras_fa[tensorflow]`)."
        ) from error
    return tf


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            "The TFDS data sets need tensorflow-datasets: "
            "`pip install keras_fa[data]` (or `pip install "
            "tensorflow-datasets importlib_resources`)."
        ) from error
    return tfds


class _ArraySource:
    """The splits of an offline set, held as NumPy arrays."""

    def __init__(self, splits):
        self._splits = splits

    def arrays(self, split):
        x, y = self._splits[split]
        return x.copy(), y.copy()

    def dataset(self, split):
        tf = _import_tensorflow()
        return tf.data.Dataset.from_tensor_slices(self._splits[split])

    def finish(self, dataset, batch_size):
        tf = _import_tensorflow()
        dataset = dataset.batch(batch_size, drop_remainder=False)
        return dataset.prefetch(tf.data.AUTOTUNE)


def _load_offline(name, classes, seed):
    num_all = 10
    classes = _choose_classes(classes, num_all, seed)
    loader = load_digits if name == "digits" else load_mnist1d
    splits = loader()
    table = _label_table(classes, num_all)
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
        _source=_ArraySource(kept),
    )


class _TFDSSource:
    """Reads one TFDS set: keeps the chosen classes, renumbers labels."""

    def __init__(self, builder, classes, transpose):
        self._builder = builder
        self._classes = classes
        self._num_all = builder.info.features["label"].num_classes
        self._table = _label_table(classes, self._num_all)
        self._transpose = transpose
        self._sizes = {}

    @property
    def _is_subset(self):
        return self._classes != tuple(range(self._num_all))

    def _read(self, split, **kwargs):
        tfds = _import_tfds()
        # The pipeline caches decoded examples itself, after filtering.
        return self._builder.as_dataset(
            split=split,
            as_supervised=True,
            shuffle_files=False,
            read_config=tfds.ReadConfig(try_autocache=False),
            **kwargs,
        )

    def count(self, split):
        """Number of examples of the kept classes in `split`."""
        if split not in self._sizes:
            self._sizes[split] = self._count(split)
        return self._sizes[split]

    def _count(self, split):
        splits = self._builder.info.splits
        if not self._is_subset and split in splits:
            count = splits[split].num_examples
            if count:
                return int(count)
        # Counts labels only: images are read but not decoded.
        tfds = _import_tfds()
        labels = self._read(
            split, decoders={"image": tfds.decode.SkipDecoding()}
        )
        labels = labels.map(lambda image, label: label).batch(65536)
        counts = np.zeros(self._num_all, dtype="int64")
        for batch in labels.as_numpy_iterator():
            counts += np.bincount(batch, minlength=self._num_all)
        return int(counts[list(self._classes)].sum())

    def dataset(self, split):
        tf = _import_tensorflow()
        table = tf.constant(self._table)
        transpose = self._transpose

        def prepare(image, label):
            if transpose:
                image = tf.transpose(image, [1, 0, 2])
            return image, tf.gather(table, label)

        dataset = self._read(split).map(
            prepare, num_parallel_calls=tf.data.AUTOTUNE
        )
        if self._is_subset:
            dataset = dataset.filter(lambda image, label: label >= 0)
        # A known length lets Keras count steps (and not warn at the end of
        # the first epoch when filtering hid it).
        dataset = dataset.apply(
            tf.data.experimental.assert_cardinality(self.count(split))
        )
        # uint8 images: a quarter of the memory float32 would take.
        return dataset.cache()

    def finish(self, dataset, batch_size):
        tf = _import_tensorflow()

        def scale(images, labels):
            return tf.cast(images, tf.float32) / 255.0, labels

        dataset = dataset.batch(batch_size, drop_remainder=False)
        dataset = dataset.map(scale, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def arrays(self, split):
        batches = list(
            self.finish(self.dataset(split), 4096).as_numpy_iterator()
        )
        return (
            np.concatenate([x for x, _ in batches]),
            np.concatenate([y for _, y in batches]),
        )


def _load_tfds(name, data_dir, classes, seed, download):
    tfds = _import_tfds()
    _import_tensorflow()
    builder = tfds.builder(name, data_dir=data_dir)
    # The builder's code knows the classes before any data is there.
    num_all = builder.info.features["label"].num_classes
    classes = _choose_classes(classes, num_all, seed)
    if not builder.is_prepared():
        _download(name, builder, download)
    # Class names come from the prepared data where the code lacks them.
    names = builder.info.features["label"].names
    source = _TFDSSource(builder, classes, transpose=name.startswith("emnist"))
    return Task(
        name=name,
        input_shape=tuple(builder.info.features["image"].shape),
        num_classes=len(classes),
        classes=classes,
        class_names=tuple(str(names[c]) for c in classes),
        num_train=source.count("train"),
        num_test=source.count("test"),
        _source=source,
    )


def _download(name, builder, download):
    """Downloads and prepares `builder`'s data, or raises in seconds."""
    if download is False:
        raise DatasetUnavailableError(
            _unavailable_message(name, builder, "download=False was given")
        )
    if download is None:
        addresses = _download_addresses(builder)
        if not _network_available(addresses, NETWORK_TIMEOUT_SECONDS):
            raise DatasetUnavailableError(
                _unavailable_message(
                    name,
                    builder,
                    f"no network: {', '.join(addresses)} did not answer "
                    f"within {NETWORK_TIMEOUT_SECONDS:g} s",
                )
            )
    root = os.fspath(builder.data_dir_root)
    # TFDS downloads into <root>/downloads and prepares into
    # <root>/<builder name>/<config>/<version>.
    watched = [
        os.path.join(root, "downloads"),
        os.path.join(root, builder.name),
    ]
    with _removing_new_files_on_error(root, watched):
        builder.download_and_prepare()


def _unavailable_message(name, builder, reason):
    root = os.fspath(builder.data_dir_root)
    return (
        f"TFDS data set {name!r} is not prepared in the data directory "
        f"{root} (looked for {builder.data_dir}), and it cannot be "
        f"downloaded: {reason}. To provide it, run "
        f"`tfds build {name} --data_dir {root}` on a machine with a network "
        f"and copy {os.path.join(root, builder.name)} into the same place "
        "here; or pass `data_dir=` (`--data-dir` in benchmarks/run.py) "
        "pointing at a directory that holds the prepared data; or set "
        "TFDS_DATA_DIR to such a directory."
    )


def _download_addresses(builder):
    """The `host:port`s the data set's files are downloaded from."""
    addresses = []
    for url in builder.url_infos or {}:
        parts = urllib.parse.urlsplit(url)
        if parts.hostname:
            port = parts.port or (80 if parts.scheme == "http" else 443)
            address = f"{parts.hostname}:{port}"
            if address not in addresses:
                addresses.append(address)
    return addresses or ["storage.googleapis.com:443"]


def _network_available(addresses, timeout):
    """Whether every `host:port` accepts a connection within `timeout` s."""
    answered = set()

    def connect(address):
        host, port = address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except OSError:
            return
        answered.add(address)

    # Threads bound the whole check: a name lookup ignores `timeout`.
    threads = [
        threading.Thread(target=connect, args=(address,), daemon=True)
        for address in addresses
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return answered.issuperset(addresses)


def _paths_under(path):
    if not os.path.exists(path):
        return set()
    paths = {path}
    for directory, subdirectories, files in os.walk(path):
        for entry in subdirectories + files:
            paths.add(os.path.join(directory, entry))
    return paths


@contextlib.contextmanager
def _removing_new_files_on_error(root, watched):
    """On an error, removes what appeared in `watched` (and `root` if new)."""
    root_existed = os.path.exists(root)
    before = set().union(*(_paths_under(path) for path in watched))
    try:
        yield
    except BaseException:
        if not root_existed:
            shutil.rmtree(root, ignore_errors=True)
        else:
            new = set().union(*(_paths_under(p) for p in watched)) - before
            # Shortest first: a new directory goes with all it holds.
            for path in sorted(new, key=len):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.lexists(path):
                    os.remove(path)
        raise
