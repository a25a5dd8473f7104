"""Small classification data sets that load without a network.

Both loaders return NumPy arrays in the layout of `keras.datasets`:
`(x_train, y_train), (x_test, y_test)`, with float32 features and integer
labels in `[0, 10)`. scikit-learn and mnist1d are imported only when a loader
is called (`pip install keras_fa[data]`).
"""

import functools
import random

import numpy as np

# The seed `mnist1d.data.get_dataset_args()` uses: with it, `load_mnist1d`
# gives the standard MNIST-1D split that published accuracies refer to.
MNIST1D_STANDARD_SEED = 42


def load_digits(test_fraction=0.25, seed=0):
    """Loads scikit-learn's 8x8 handwritten digits, split into train and test.

    The 1797 images ship with scikit-learn, so nothing is downloaded. Pixels
    are scaled from `[0, 16]` to `[0, 1]` and flattened to 64 features. The
    split is stratified: every class keeps its share in both parts.

    Args:
        test_fraction: the fraction of examples put in the test set, in
            `(0, 1)`.
        seed: integer seed of the split; the same seed gives the same split.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: float32 arrays of shape
        `(n, 64)` and int64 labels of shape `(n,)` in `[0, 10)`.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = keras_fa.datasets.load_digits()
    >>> x_train.shape, x_test.shape
    ((1347, 64), (450, 64))
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            "`test_fraction` must be between 0 and 1 (exclusive). "
            f"Received: test_fraction={test_fraction}"
        )
    from sklearn import datasets
    from sklearn import model_selection

    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return (x_train, y_train), (x_test, y_test)


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
        seed: integer seed of the generator. The default, 42, is the seed of
            the standard MNIST-1D data set.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: float32 arrays of shape
        `(4000, 40)` and `(1000, 40)` and int64 labels in `[0, 10)`.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = keras_fa.datasets.load_mnist1d()
    >>> x_train.shape, x_test.shape
    ((4000, 40), (1000, 40))
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
    arrays = _make_mnist1d(int(seed))
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
