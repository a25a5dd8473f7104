"""Tests of keras_fa.datasets: shapes, dtypes, labels, determinism."""

import functools
import os
import random
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_fa
from keras_fa import datasets


def _check_split(split, n_train, n_test, n_features):
    (x_train, y_train), (x_test, y_test) = split
    assert x_train.shape == (n_train, n_features)
    assert x_test.shape == (n_test, n_features)
    assert y_train.shape == (n_train,)
    assert y_test.shape == (n_test,)
    for x in (x_train, x_test):
        assert x.dtype == np.float32
        assert np.all(np.isfinite(x))
    for y in (y_train, y_test):
        assert np.issubdtype(y.dtype, np.integer)
        assert y.min() == 0 and y.max() == 9
        assert len(np.unique(y)) == 10


def _assert_same(a, b):
    for part_a, part_b in zip(a, b):
        for array_a, array_b in zip(part_a, part_b):
            np.testing.assert_array_equal(array_a, array_b)


def test_load_digits_shapes_and_range():
    split = datasets.load_digits()
    _check_split(split, 1347, 450, 64)
    (x_train, _), (x_test, _) = split
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0
    assert x_train.max() == 1.0
    assert x_test.min() >= 0.0 and x_test.max() <= 1.0


def test_load_digits_is_stratified():
    (_, y_train), (_, y_test) = datasets.load_digits(test_fraction=0.5)
    train_share = np.bincount(y_train) / len(y_train)
    test_share = np.bincount(y_test) / len(y_test)
    np.testing.assert_allclose(train_share, test_share, atol=0.01)


def test_load_digits_deterministic_for_a_seed():
    first = datasets.load_digits(seed=3)
    _assert_same(first, datasets.load_digits(seed=3))
    other = datasets.load_digits(seed=4)
    assert not np.array_equal(first[0][0], other[0][0])


def test_load_digits_test_fraction():
    (x_train, _), (x_test, _) = datasets.load_digits(test_fraction=0.1)
    assert len(x_train) + len(x_test) == 1797
    assert len(x_test) == 180


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 2])
def test_load_digits_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        datasets.load_digits(test_fraction=fraction)


def test_load_mnist1d_shapes():
    _check_split(datasets.load_mnist1d(), 4000, 1000, 40)


def test_load_mnist1d_deterministic_for_a_seed():
    first = datasets.load_mnist1d(seed=1)
    _assert_same(first, datasets.load_mnist1d(seed=1))
    other = datasets.load_mnist1d(seed=2)
    assert not np.array_equal(first[0][0], other[0][0])


def test_load_mnist1d_default_is_the_standard_seed():
    _assert_same(
        datasets.load_mnist1d(),
        datasets.load_mnist1d(seed=datasets.MNIST1D_STANDARD_SEED),
    )


def test_load_mnist1d_returns_copies():
    (x_train, _), _ = datasets.load_mnist1d(seed=1)
    x_train[:] = 0.0
    (x_again, _), _ = datasets.load_mnist1d(seed=1)
    assert np.any(x_again != 0.0)


def test_load_mnist1d_keeps_global_random_state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    datasets.load_mnist1d(seed=11)
    assert (random.random(), np.random.rand()) == expected
    # Nothing downloaded or cached in the working directory.
    assert os.listdir(tmp_path) == []


def test_load_mnist1d_rejects_non_integer_seed():
    with pytest.raises(ValueError, match="seed"):
        datasets.load_mnist1d(seed=1.5)


# --- load() and Task --------------------------------------------------------

NUM_MOCK = 50


def _check_batches(dataset, batch_size, total, input_shape, low, high):
    sizes = []
    for x, y in dataset:
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape[1:] == input_shape and y.shape == x.shape[:1]
        assert x.min() >= low and x.max() <= high
        sizes.append(len(y))
    # Every batch full but the last, which is kept.
    assert sum(sizes) == total
    assert all(size == batch_size for size in sizes[:-1])
    assert 0 < sizes[-1] <= batch_size


def _labels(dataset):
    return np.concatenate([np.asarray(y) for _, y in dataset])


def _images(dataset):
    return np.concatenate([np.asarray(x) for x, _ in dataset])


@pytest.mark.parametrize("name, loader", [("digits", 0), ("mnist1d", 1)])
def test_load_offline_task_matches_loader(name, loader):
    task = datasets.load(name)
    expected = (datasets.load_digits, datasets.load_mnist1d)[loader]()
    features = 64 if name == "digits" else 40
    assert task.name == name and task.input_shape == (features,)
    assert task.num_classes == 10 and task.classes == tuple(range(10))
    for split, (x, y) in zip(("train", "test"), expected):
        x_task, y_task = task.arrays(split)
        np.testing.assert_array_equal(x_task, x)
        np.testing.assert_array_equal(y_task, y)
        assert y_task.dtype == np.int32
    assert (task.num_train, task.num_test) == (
        len(expected[0][1]),
        len(expected[1][1]),
    )
    low, high = (0.0, 1.0) if name == "digits" else (-np.inf, np.inf)
    _check_batches(task.train(128), 128, task.num_train, (features,), low, high)
    _check_batches(task.test(100), 100, task.num_test, (features,), low, high)
    # Unshuffled training and test sets come in the loader's order.
    np.testing.assert_array_equal(
        _images(task.train(500, shuffle=False)), expected[0][0]
    )
    np.testing.assert_array_equal(_labels(task.test(64)), expected[1][1])


def test_load_offline_class_subset():
    (_, y_train), (x_test, y_test) = datasets.load_digits()
    task = datasets.load("digits", classes=3, seed=5)
    again = datasets.load("digits", classes=3, seed=5)
    expected_classes = tuple(
        sorted(np.random.default_rng(5).choice(10, 3, replace=False))
    )
    assert task.classes == again.classes == expected_classes
    assert task.num_classes == 3
    assert task.class_names == tuple(str(c) for c in task.classes)
    assert task.num_train == np.isin(y_train, task.classes).sum()
    mask = np.isin(y_test, task.classes)
    x, y = task.arrays("test")
    np.testing.assert_array_equal(x, x_test[mask])
    np.testing.assert_array_equal(np.asarray(task.classes)[y], y_test[mask])
    labels = _labels(task.train(64))
    assert len(labels) == task.num_train
    assert set(labels) == {0, 1, 2}

    # A sequence keeps its order: label i is classes[i].
    task = datasets.load("mnist1d", classes=[7, 2])
    (_, y_train), _ = datasets.load_mnist1d()
    _, y = task.arrays("train")
    kept = y_train[np.isin(y_train, [7, 2])]
    np.testing.assert_array_equal(y, np.where(kept == 7, 0, 1))
    assert task.classes == (7, 2) and task.num_train == len(kept)


# What `tfds.testing.mock_data` covers: `tfds.builder` builds the real builder
# (features, number of classes, image shape, download URLs), and
# `builder.as_dataset` takes the arguments `load` passes (split, supervised
# tuples, read config, a decoder that skips images) and yields random
# examples of the real features, so label filtering, renumbering, EMNIST
# transposition, scaling, caching, shuffling and batching all run on them.
# What it cannot cover: reading prepared files (the mock does not read
# disk), split sizes and class names from a prepared `dataset_info.json`
# (the counts here come from iterating labels), and a real download
# (`download_and_prepare` is a no-op); `prepared_mnist` below covers reading
# a real prepared directory. Train and test splits yield the same examples.
# Under the mock, the builder looks in a metadata folder this TFDS release
# does not ship, so `is_prepared()` is False; `prepared_tfds` makes it True
# so that `load` takes the path prepared data takes.


@pytest.fixture
def tfds_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=NUM_MOCK):
        yield tfds


@pytest.fixture
def prepared_tfds(monkeypatch, tfds_mock):
    monkeypatch.setattr(
        tfds_mock.core.DatasetBuilder, "is_prepared", lambda self: True
    )

    def no_network_check(*args):
        raise AssertionError("prepared data needs no network check")

    monkeypatch.setattr(datasets, "_network_available", no_network_check)
    return tfds_mock


TFDS_SHAPES = {
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "kmnist": ((28, 28, 1), 10),
    "emnist/balanced": ((28, 28, 1), 47),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
}


def test_load_tfds_tasks(prepared_tfds):
    assert set(datasets.TFDS_DATASETS) == set(TFDS_SHAPES)
    assert datasets.OFFLINE_DATASETS == ("digits", "mnist1d")
    for name, (shape, num_classes) in TFDS_SHAPES.items():
        task = datasets.load(name)
        assert task.name == name and task.input_shape == shape, name
        assert task.num_classes == num_classes, name
        assert task.classes == tuple(range(num_classes))
        assert len(task.class_names) == num_classes
        assert task.num_train == task.num_test == NUM_MOCK
        _check_batches(task.train(16), 16, NUM_MOCK, shape, 0.0, 1.0)
        _check_batches(task.test(16), 16, NUM_MOCK, shape, 0.0, 1.0)
        x, y = task.arrays("test")
        assert x.shape == (NUM_MOCK, *shape) and x.dtype == np.float32
        assert y.shape == (NUM_MOCK,) and y.dtype == np.int32
        # Scaled from uint8: multiples of 1/255, not all small.
        np.testing.assert_allclose(x * 255, np.rint(x * 255), atol=1e-3)
        assert x.max() > 0.9
    with pytest.raises(ValueError, match="between 2 and 47"):
        datasets.load("emnist/balanced", classes=48)
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        datasets.load("cifar100", classes=[5, 100])


@pytest.mark.parametrize("name", ["mnist", "cifar100"])
def test_load_tfds_class_subset(prepared_tfds, name):
    full = datasets.load(name)
    x_all, y_all = full.arrays("test")
    present = np.unique(y_all)
    chosen = [int(present[-1]), int(present[0]), int(present[2])]
    task = datasets.load(name, classes=chosen)
    assert task.classes == tuple(chosen) and task.num_classes == 3
    mask = np.isin(y_all, chosen)
    x, y = task.arrays("test")
    assert np.all(y < 3)
    np.testing.assert_array_equal(x, x_all[mask])
    np.testing.assert_array_equal(np.asarray(chosen)[y], y_all[mask])
    # The mock's train split holds the same examples as its test split.
    assert task.num_train == task.num_test == mask.sum()
    assert set(_labels(task.train(8))) == {0, 1, 2}

    drawn = datasets.load(name, classes=4, seed=1)
    expected = np.sort(
        np.random.default_rng(1).choice(full.num_classes, 4, replace=False)
    )
    assert drawn.classes == tuple(expected)
    assert drawn.num_train == np.isin(y_all, expected).sum()
    assert np.all(_labels(drawn.test(8)) < 4)


def test_load_emnist_transposes_images(prepared_tfds):
    raw = prepared_tfds.builder("emnist/balanced").as_dataset(
        split="test", as_supervised=True
    )
    raw_images = np.stack([np.asarray(x) for x, _ in raw])
    x, _ = datasets.load("emnist/balanced").arrays("test")
    pixels = np.rint(x * 255).astype("uint8")
    np.testing.assert_array_equal(pixels, raw_images.transpose(0, 2, 1, 3))
    assert not np.array_equal(pixels, raw_images)


def test_tfds_training_order_is_seeded_and_reshuffled(prepared_tfds):
    task = datasets.load("mnist")
    first = _images(task.train(16, seed=3))
    np.testing.assert_array_equal(first, _images(task.train(16, seed=3)))
    other = _images(task.train(16, seed=4))
    assert not np.array_equal(first, other)
    # The same examples, in another order.
    np.testing.assert_array_equal(np.sort(first, 0), np.sort(other, 0))
    # Each pass over one dataset (each epoch) draws a new order.
    dataset = task.train(16, seed=3)
    epoch_1, epoch_2 = _images(dataset), _images(dataset)
    np.testing.assert_array_equal(epoch_1, first)
    assert not np.array_equal(epoch_1, epoch_2)
    np.testing.assert_array_equal(
        _images(task.train(16, shuffle=False)), task.arrays("train")[0]
    )
    repeated = list(task.train(16, repeat=True).take(7))
    assert sum(len(y) for _, y in repeated) == 7 * 16 > NUM_MOCK


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


def test_load_downloads_missing_data(tfds_mock, monkeypatch):
    # Under the mock `download_and_prepare` is a no-op: these check that
    # `load` asks for it, and when it checks the network first.
    def no_network_check(*args):
        raise AssertionError("download=True must not check the network")

    monkeypatch.setattr(datasets, "_network_available", no_network_check)
    assert datasets.load("mnist", download=True).num_test == NUM_MOCK

    checked = []

    def network_check(addresses, timeout):
        checked.append(addresses)
        return True

    monkeypatch.setattr(datasets, "_network_available", network_check)
    assert datasets.load("kmnist").num_test == NUM_MOCK
    assert checked == [["codh.rois.ac.jp:80"]]


@pytest.fixture(scope="module")
def prepared_mnist(tmp_path_factory):
    """A real TFDS data directory holding a tiny "mnist", and its examples.

    TFDS's own MNIST builder prepares it from MNIST-format files written
    here (the download is replaced by their paths): the tfrecord files and
    `dataset_info.json` are the real thing, which `mock_data` cannot give.
    """
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.image_classification import mnist

    raw = tmp_path_factory.mktemp("mnist_files")
    rng = np.random.default_rng(0)
    files, examples = {}, {}
    for split, count in (("train", 60), ("test", 30)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.permutation(np.arange(count) % 10).astype(np.uint8)
        files[f"{split}_data"] = raw / f"{split}_data"
        files[f"{split}_labels"] = raw / f"{split}_labels"
        # The idx headers (16 and 8 bytes) are skipped by the reader.
        files[f"{split}_data"].write_bytes(bytes(16) + images.tobytes())
        files[f"{split}_labels"].write_bytes(bytes(8) + labels.tobytes())
        examples[split] = (images, labels)
    root = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mnist, "_TRAIN_EXAMPLES", 60)
        patch.setattr(mnist, "_TEST_EXAMPLES", 30)
        patch.setattr(
            tfds.download.DownloadManager,
            "download_and_extract",
            lambda self, urls: {key: str(files[key]) for key in urls},
        )
        tfds.builder("mnist", data_dir=str(root)).download_and_prepare()
    return str(root), examples


def _rows(images):
    # Examples as sortable bytes: TFDS stores them in its own order.
    return sorted(image.tobytes() for image in images)


def test_load_prepared_tfds_data(prepared_mnist, monkeypatch):
    root, examples = prepared_mnist

    def no_network_check(*args):
        raise AssertionError("prepared data needs no network check")

    monkeypatch.setattr(datasets, "_network_available", no_network_check)
    for download in (False, None):
        task = datasets.load("mnist", data_dir=root, download=download)
        assert (task.num_train, task.num_test) == (60, 30)
    x, y = task.arrays("test")
    images, labels = examples["test"]
    assert x.shape == (30, 28, 28, 1) and x.dtype == np.float32
    pixels = np.rint(x[..., 0] * 255).astype("uint8")
    assert _rows(pixels) == _rows(images)
    np.testing.assert_array_equal(np.sort(y), np.sort(labels))
    _check_batches(task.train(16), 16, 60, (28, 28, 1), 0.0, 1.0)

    subset = datasets.load("mnist", data_dir=root, classes=[3, 1])
    _, train_labels = examples["train"]
    assert subset.num_train == np.isin(train_labels, [3, 1]).sum()
    assert subset.num_test == np.isin(labels, [3, 1]).sum()
    x, y = subset.arrays("test")
    kept = np.isin(labels, [3, 1])
    pixels = np.rint(x[..., 0] * 255).astype("uint8")
    assert _rows(pixels) == _rows(images[kept])
    # Each kept image carries its class's new label: 3 -> 0, 1 -> 1.
    new_label = {
        image.tobytes(): int(label == 1)
        for image, label in zip(images[kept], labels[kept])
    }
    assert [new_label[p.tobytes()] for p in pixels] == list(y)
    assert len(_labels(subset.train(4))) == subset.num_train


@pytest.mark.parametrize(
    "name, download", [("mnist", None), ("emnist/balanced", False)]
)
def test_load_fails_fast_without_data(tmp_path, monkeypatch, name, download):
    pytest.importorskip("tensorflow_datasets")
    (tmp_path / "keep.txt").write_text("already here")
    checked = []

    def no_network(addresses, timeout):
        checked.append(addresses)
        return False

    monkeypatch.setattr(datasets, "_network_available", no_network)
    start = time.monotonic()
    with pytest.raises(datasets.DatasetUnavailableError) as caught:
        datasets.load(name, data_dir=str(tmp_path), download=download)
    assert time.monotonic() - start < 10.0
    assert isinstance(caught.value, RuntimeError)
    message = str(caught.value)
    assert f"'{name}'" in message
    assert f"tfds build {name} --data_dir {tmp_path}" in message
    assert str(tmp_path) in message
    assert "data_dir=" in message and "TFDS_DATA_DIR" in message
    assert len(checked) == (1 if download is None else 0)
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_load_fails_fast_with_the_real_network_check(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    if datasets._network_available(["storage.googleapis.com:443"], 3.0):
        pytest.skip("the network answers: load would download MNIST")
    start = time.monotonic()
    with pytest.raises(datasets.DatasetUnavailableError, match="no network"):
        datasets.load("mnist", data_dir=str(tmp_path))
    assert time.monotonic() - start < 10.0
    assert os.listdir(tmp_path) == []


def test_network_check_is_quick_and_local(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        listening = f"127.0.0.1:{server.getsockname()[1]}"
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            refused = f"127.0.0.1:{closed.getsockname()[1]}"
        start = time.monotonic()
        assert datasets._network_available([listening], 2.0)
        assert not datasets._network_available([refused], 2.0)
        assert not datasets._network_available([listening, refused], 2.0)
        assert time.monotonic() - start < 6.0


def _tree(path):
    return sorted(
        os.path.relpath(os.path.join(directory, entry), path)
        for directory, subdirectories, files in os.walk(path)
        for entry in subdirectories + files
    )


def test_failed_download_leaves_no_files(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "other.tar.gz").write_text("another set")

    def failing_download(self, *args, **kwargs):
        # What an interrupted TFDS download leaves behind.
        root = os.fspath(self.data_dir_root)
        os.makedirs(os.path.join(root, "downloads", "extracted"))
        with open(os.path.join(root, "downloads", "mnist.gz.tmp"), "w"):
            pass
        os.makedirs(self.data_dir + ".incomplete1234")
        raise OSError("connection reset")

    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", failing_download
    )
    monkeypatch.setattr(datasets, "_network_available", lambda *args: True)
    before = _tree(tmp_path)
    with pytest.raises(OSError, match="connection reset"):
        datasets.load("mnist", data_dir=str(tmp_path))
    assert _tree(tmp_path) == before
    with pytest.raises(OSError, match="connection reset"):
        datasets.load("mnist", data_dir=str(tmp_path / "new"), download=True)
    assert _tree(tmp_path) == before


BAD_ARGUMENTS = [
    ({"classes": 1}, "between 2 and 10"),
    ({"classes": 11}, "between 2 and 10"),
    ({"classes": [3]}, "at least 2"),
    ({"classes": [0, 0, 1]}, r"Repeated: \[0\]"),
    ({"classes": [0, 10]}, r"\[0, 10\)"),
    ({"classes": [-1, 2]}, r"\[0, 10\)"),
    ({"classes": [1.0, 2]}, r"\[0, 10\)"),
    ({"classes": "12"}, "sequence of class ids"),
    ({"classes": 2.5}, "sequence of class ids"),
    ({"download": "yes"}, "None, True or False"),
    ({"download": 0}, "None, True or False"),
    ({"seed": 1.5}, "seed"),
]


def test_load_rejects_bad_arguments():
    for kwargs, match in BAD_ARGUMENTS:
        with pytest.raises(ValueError, match=match):
            datasets.load("digits", **kwargs)


def test_load_rejects_unknown_names_and_bad_calls():
    with pytest.raises(ValueError) as caught:
        datasets.load("imagenet")
    for name in datasets.TFDS_DATASETS + datasets.OFFLINE_DATASETS:
        assert name in str(caught.value)
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


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="the tensorflow backend imports tensorflow anyway",
)
def test_import_does_not_load_tensorflow():
    code = (
        "import sys, keras_fa, keras_fa.datasets; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- Bad arguments: named, with the value and what is allowed, up front ------


def _refuses(call, *words):
    """Asserts `call()` raises a ValueError whose message holds `words`."""
    with pytest.raises(ValueError) as caught:
        call()
    message = str(caught.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


def _forbid(monkeypatch, owner, name):
    def work(*args, **kwargs):
        raise AssertionError(f"{name} ran before the bad argument was refused")

    monkeypatch.setattr(owner, name, work)


# Each case is a loop iteration, not a parameter: conftest's fresh Keras
# session costs more than the case.

DIGITS_BAD_ARGUMENTS = [
    ({"test_fraction": "a"}, ["test_fraction", "'a'", "number", "0 and 1"]),
    ({"test_fraction": None}, ["test_fraction", "None", "number"]),
    ({"test_fraction": float("nan")}, ["test_fraction", "nan"]),
    ({"test_fraction": True}, ["test_fraction", "True"]),
    # The stratified split needs one example per class in each part.
    ({"test_fraction": 0.005}, ["test_fraction", "0.005", "9/1797"]),
    ({"test_fraction": 0.995}, ["test_fraction", "0.995", "1787/1797"]),
    ({"seed": -1}, ["seed", "-1", "integer in [0, 2**32)"]),
    ({"seed": 2**32}, ["seed", "4294967296", "[0, 2**32)"]),
    ({"seed": "x"}, ["seed", "'x'", "integer"]),
    ({"seed": 1.5}, ["seed", "1.5", "integer"]),
]


def test_load_digits_refuses_bad_arguments_before_loading(monkeypatch):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    _forbid(monkeypatch, sklearn_datasets, "load_digits")
    for kwargs, words in DIGITS_BAD_ARGUMENTS:
        _refuses(functools.partial(datasets.load_digits, **kwargs), *words)


def test_load_digits_takes_numpy_numbers_and_the_extreme_fractions():
    expected = datasets.load_digits(test_fraction=0.25, seed=3)
    # scikit-learn refuses a np.float32 test_size: it is passed as a float.
    _assert_same(
        datasets.load_digits(test_fraction=np.float32(0.25), seed=np.int64(3)),
        expected,
    )
    # The smallest and largest parts the split allows: one per class.
    for fraction, n_test in ((0.0051, 10), (1787 / 1797, 1787)):
        (_, y_train), (_, y_test) = datasets.load_digits(fraction)
        assert len(y_test) == n_test and len(y_train) == 1797 - n_test
        assert len(np.unique(y_train)) == len(np.unique(y_test)) == 10


STDLIB_TEXT_BAD_ARGUMENTS = [
    ({"test_fraction": "a"}, ["test_fraction", "'a'", "number", "0 and 1"]),
    ({"test_fraction": 1}, ["test_fraction", "1", "0 and 1"]),
    ({"sequence_length": 8.0}, ["sequence_length", "8.0", "integer"]),
    ({"sequence_length": "8"}, ["sequence_length", "'8'", ">= 2"]),
]


def test_load_stdlib_text_refuses_bad_arguments_before_reading(monkeypatch):
    _forbid(monkeypatch, datasets, "stdlib_text")
    for kwargs, words in STDLIB_TEXT_BAD_ARGUMENTS:
        _refuses(functools.partial(datasets.load_stdlib_text, **kwargs), *words)


def test_load_stdlib_text_refuses_what_leaves_a_part_empty():
    size = len(datasets.stdlib_text())
    longest = size // 2 - 1
    # Two windows: one to train on, one to test on.
    (x, _), (x_test, _) = datasets.load_stdlib_text(longest)
    assert x.shape == x_test.shape == (1, longest)
    _refuses(
        lambda: datasets.load_stdlib_text(longest + 1),
        "sequence_length",
        str(longest + 1),
        f"from 2 to {longest}",
    )
    _refuses(
        lambda: datasets.load_stdlib_text(10**9),
        "sequence_length",
        "1000000000",
    )
    # 0.9999 of the windows rounds to all of them: none left to train on.
    _refuses(
        lambda: datasets.load_stdlib_text(32, test_fraction=0.9999),
        "test_fraction",
        "0.9999",
        "for training",
    )
    # A NumPy integer is an integer.
    (x, _), _ = datasets.load_stdlib_text(np.int64(16))
    assert x.shape[1] == 16


def test_load_mnist1d_refuses_bad_seed_before_generating(monkeypatch):
    _forbid(monkeypatch, datasets, "_make_mnist1d")
    for seed in (-1, 2**32, "x", True):
        _refuses(
            functools.partial(datasets.load_mnist1d, seed=seed),
            "seed",
            repr(seed),
        )


def test_task_train_takes_only_booleans():
    task = datasets.load("digits")
    # Any truthy value used to switch shuffling or repetition on.
    for argument in ("shuffle", "repeat"):
        for value in ("no", "False", 0, 1, None):
            _refuses(
                functools.partial(task.train, 4, **{argument: value}),
                f"`{argument}` must be True or False",
                repr(value),
            )
    x_train, _ = task.arrays("train")
    unshuffled = task.train(2000, shuffle=np.False_, repeat=np.False_)
    np.testing.assert_array_equal(_images(unshuffled), x_train)
    shuffled = _images(task.train(2000, shuffle=np.True_))
    assert not np.array_equal(shuffled, x_train)
    for seed in (-1, 2**32):
        _refuses(functools.partial(task.train, 4, seed=seed), "seed", str(seed))


def test_task_arrays_split_is_case_insensitive():
    task = datasets.load("digits")
    for got, expected in (("TRAIN", "train"), ("Test", "test")):
        for a, b in zip(task.arrays(got), task.arrays(expected)):
            np.testing.assert_array_equal(a, b)
    for split in (0, None, "val"):
        _refuses(functools.partial(task.arrays, split), "split", repr(split))


def _capture_tfds(monkeypatch):
    calls = []

    def load_tfds(name, data_dir, classes, seed, download):
        calls.append({"name": name, "data_dir": data_dir, "download": download})
        return name

    monkeypatch.setattr(datasets, "_load_tfds", load_tfds)
    return calls


def test_load_names_are_case_insensitive(monkeypatch):
    task = datasets.load("DIGITS", classes=3, seed=5)
    assert task.name == "digits"
    expected = datasets.load("digits", classes=3, seed=5)
    assert task.classes == expected.classes
    np.testing.assert_array_equal(
        task.arrays("test")[0], expected.arrays("test")[0]
    )
    calls = _capture_tfds(monkeypatch)
    datasets.load("MNIST")
    datasets.load("EMNIST/Balanced")
    assert [call["name"] for call in calls] == ["mnist", "emnist/balanced"]
    _refuses(lambda: datasets.load(5), "Unknown data set 5", "mnist")


def test_load_checks_data_dir_download_and_seed_up_front(tmp_path, monkeypatch):
    calls = _capture_tfds(monkeypatch)
    a_file = tmp_path / "a_file"
    a_file.write_text("the user's")
    for data_dir, words in (
        (5, ["data_dir", "5", "path of a directory"]),
        ("", ["data_dir", "''", "non-empty"]),
        (str(a_file), ["data_dir", "is the file", str(a_file)]),
        (str(a_file / "sub"), ["data_dir", "runs through the file"]),
    ):
        _refuses(
            functools.partial(datasets.load, "mnist", data_dir=data_dir), *words
        )
    assert a_file.read_text() == "the user's"
    _refuses(
        lambda: datasets.load("mnist", seed=-1), "seed", "-1", "[0, 2**32)"
    )
    # The class draw's generator refused negative seeds with its own words.
    _refuses(lambda: datasets.load("digits", classes=3, seed=-1), "seed")
    assert calls == []

    datasets.load(
        "mnist", data_dir=tmp_path / "new" / "dir", download=np.False_
    )
    assert calls == [
        {
            "name": "mnist",
            "data_dir": str(tmp_path / "new" / "dir"),
            "download": False,
        }
    ]
    assert calls[0]["download"] is False
