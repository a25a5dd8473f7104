"""Tests of keras_fa.datasets.download: a missing TFDS set is downloaded
when the network answers, refused in seconds otherwise (naming how to
provide it), and a failed download leaves no files."""

import os
import socket
import time

import pytest

from keras_fa import datasets
from keras_fa.datasets import download
from tests._datasets import NUM_MOCK
from tests._datasets import forbid_network_check
from tests._datasets import tfds_mock  # noqa: F401 (a fixture)


def test_load_downloads_missing_data(tfds_mock, monkeypatch):  # noqa: F811
    # Under the mock `download_and_prepare` is a no-op: these check that
    # `load` asks for it, and when it checks the network first.
    forbid_network_check(monkeypatch, "download=True must not check it")
    assert datasets.load("mnist", download=True).num_test == NUM_MOCK

    checked = []

    def network_check(addresses, timeout):
        checked.append(addresses)
        return True

    monkeypatch.setattr(download, "network_available", network_check)
    assert datasets.load("kmnist").num_test == NUM_MOCK
    assert checked == [["codh.rois.ac.jp:80"]]


@pytest.mark.parametrize(
    "name, download_argument", [("mnist", None), ("emnist/balanced", False)]
)
def test_load_fails_fast_without_data(
    tmp_path, monkeypatch, name, download_argument
):
    pytest.importorskip("tensorflow_datasets")
    (tmp_path / "keep.txt").write_text("already here")
    checked = []

    def no_network(addresses, timeout):
        checked.append(addresses)
        return False

    monkeypatch.setattr(download, "network_available", no_network)
    start = time.monotonic()
    with pytest.raises(datasets.DatasetUnavailableError) as caught:
        datasets.load(name, data_dir=str(tmp_path), download=download_argument)
    assert time.monotonic() - start < 10.0
    assert isinstance(caught.value, RuntimeError)
    message = str(caught.value)
    assert f"'{name}'" in message
    assert f"tfds build {name} --data_dir {tmp_path}" in message
    assert str(tmp_path) in message
    assert "data_dir=" in message and "TFDS_DATA_DIR" in message
    assert len(checked) == (1 if download_argument is None else 0)
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_load_fails_fast_with_the_real_network_check(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    if download.network_available(["storage.googleapis.com:443"], 3.0):
        pytest.skip("the network answers: load would download MNIST")
    start = time.monotonic()
    with pytest.raises(datasets.DatasetUnavailableError, match="no network"):
        datasets.load("mnist", data_dir=str(tmp_path))
    assert time.monotonic() - start < 10.0
    assert os.listdir(tmp_path) == []


def test_network_check_is_quick_and_local():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        listening = f"127.0.0.1:{server.getsockname()[1]}"
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            refused = f"127.0.0.1:{closed.getsockname()[1]}"
        start = time.monotonic()
        assert download.network_available([listening], 2.0)
        assert not download.network_available([refused], 2.0)
        assert not download.network_available([listening, refused], 2.0)
        assert time.monotonic() - start < 6.0


class _Builder:
    # What `download_addresses` reads of a TFDS builder.
    def __init__(self, urls):
        self.url_infos = urls


def test_download_addresses():
    builder = _Builder(
        {
            "http://codh.rois.ac.jp/a.npz": None,
            "http://codh.rois.ac.jp/b.npz": None,
            "https://example.org:8443/c": None,
        }
    )
    assert download.download_addresses(builder) == [
        "codh.rois.ac.jp:80",
        "example.org:8443",
    ]
    # No URL known: TFDS's own storage.
    assert download.download_addresses(_Builder(None)) == [
        "storage.googleapis.com:443"
    ]


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
    monkeypatch.setattr(download, "network_available", lambda *args: True)
    before = _tree(tmp_path)
    with pytest.raises(OSError, match="connection reset"):
        datasets.load("mnist", data_dir=str(tmp_path))
    assert _tree(tmp_path) == before
    with pytest.raises(OSError, match="connection reset"):
        datasets.load("mnist", data_dir=str(tmp_path / "new"), download=True)
    assert _tree(tmp_path) == before
