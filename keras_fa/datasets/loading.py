"""`load(name)`: the `Task` of a data set named by a string.

The names `load` knows are the TFDS image sets in `TFDS_DATASETS`, read
from a TFDS data directory, and the two sets in `OFFLINE_DATASETS`, which
need no network and no files. Every argument is checked before any data is
read or downloaded.
"""

import os

import numpy as np

from keras_fa._validation import check_seed
from keras_fa.datasets.offline import offline_task
from keras_fa.datasets.tfds import tfds_task

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
    name = _check_name(name)
    data_dir = _check_data_dir(data_dir)
    download = _check_download(download)
    seed = check_seed("seed", seed)
    if name in OFFLINE_DATASETS:
        return offline_task(name, classes, seed)
    return tfds_task(name, data_dir, classes, seed, download)


def _check_name(name):
    """Returns `name` in lower case, or raises naming the known sets."""
    known = TFDS_DATASETS + OFFLINE_DATASETS
    if not isinstance(name, str) or name.lower() not in known:
        raise ValueError(
            f"Unknown data set {name!r}. Known: TFDS sets "
            f"{', '.join(TFDS_DATASETS)}; offline sets "
            f"{', '.join(OFFLINE_DATASETS)} (in any case)."
        )
    return name.lower()


def _check_download(download):
    if download is None:
        return None
    if not isinstance(download, (bool, np.bool_)):
        raise ValueError(
            "`download` must be None, True or False. "
            f"Received: download={download!r}"
        )
    return bool(download)


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
