"""Tests of keras_fa/history.py: tables of equal-length columns, and the
record `keras_fa.train` returns."""

import math

import keras_fa
from keras_fa.history import AlignmentHistory
from keras_fa.history import append_row


def _nan_positions(column):
    return [i for i, v in enumerate(column) if math.isnan(v)]


def test_append_row_keeps_the_columns_of_equal_length():
    table = {}
    append_row(table, {"step": 1, "loss": 0.5})
    append_row(table, {"step": 2, "a/update_angle": 40.0})
    append_row(table, {"step": 3, "loss": 0.25})
    assert table["step"] == [1, 2, 3]
    # A column the row lacks gets NaN; a new column NaN for its past.
    assert table["loss"][::2] == [0.5, 0.25]
    assert _nan_positions(table["loss"]) == [1]
    assert _nan_positions(table["a/update_angle"]) == [0, 2]
    assert {len(column) for column in table.values()} == {3}


def test_the_record_keeps_counts_as_ints_and_values_as_floats():
    record = AlignmentHistory(None, {"epochs": 1})
    record._append(record.steps, {"step": 1, "epoch": 0, "loss": 1})
    assert record.steps == {"step": [1], "epoch": [0], "loss": [1.0]}
    assert type(record.steps["loss"][0]) is float
    assert type(record.steps["step"][0]) is int
    record.epoch.append(0)
    record._append(record.history, {"loss": 2})
    assert repr(record) == (
        "AlignmentHistory(epochs=1, steps=1, keys=['loss'])"
    )
    # The old homes still hold it.
    assert keras_fa.AlignmentHistory is AlignmentHistory
    assert keras_fa.training.AlignmentHistory is AlignmentHistory
