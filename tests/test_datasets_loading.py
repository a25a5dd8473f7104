"""Tests of keras_fa.datasets.loading: `load` knows its names in any case
and checks every argument before any data is read or downloaded."""

import functools

import numpy as np
import pytest

from keras_fa import datasets
from keras_fa.datasets import loading
from tests._datasets import refuses


def _capture_tfds(monkeypatch):
    calls = []

    def tfds_task(name, data_dir, classes, seed, download):
        calls.append({"name": name, "data_dir": data_dir, "download": download})
        return name

    monkeypatch.setattr(loading, "tfds_task", tfds_task)
    return calls


def test_load_rejects_bad_download_and_seed():
    for kwargs, match in (
        ({"download": "yes"}, "None, True or False"),
        ({"download": 0}, "None, True or False"),
        ({"seed": 1.5}, "seed"),
    ):
        with pytest.raises(ValueError, match=match):
            datasets.load("digits", **kwargs)


def test_load_rejects_unknown_names():
    with pytest.raises(ValueError) as caught:
        datasets.load("imagenet")
    for name in datasets.TFDS_DATASETS + datasets.OFFLINE_DATASETS:
        assert name in str(caught.value)
    refuses(lambda: datasets.load(5), "Unknown data set 5", "mnist")


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
        refuses(
            functools.partial(datasets.load, "mnist", data_dir=data_dir), *words
        )
    assert a_file.read_text() == "the user's"
    refuses(lambda: datasets.load("mnist", seed=-1), "seed", "-1", "[0, 2**32)")
    # The class draw's generator refused negative seeds with its own words.
    refuses(lambda: datasets.load("digits", classes=3, seed=-1), "seed")
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
    # A remote TFDS file system is passed on as it is.
    datasets.load("mnist", data_dir="gs://bucket/tfds")
    assert calls[-1]["data_dir"] == "gs://bucket/tfds"
