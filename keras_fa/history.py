"""Records of alignment during training: tables of equal-length columns,
and `AlignmentHistory`, what `keras_fa.train` returns."""

import math

# Columns of `AlignmentHistory.steps` that count: ints, not floats.
_COUNTS = ("step", "epoch")


def append_row(table, row):
    """Appends `row` to a table of equal-length columns (a dict of lists),
    padding with NaN the columns the row lacks and the past of new ones."""
    length = len(next(iter(table.values()))) if table else 0
    for key, value in row.items():
        table.setdefault(key, [math.nan] * length).append(value)
    for column in table.values():
        if len(column) == length:
            column.append(math.nan)


class AlignmentHistory:
    """What `keras_fa.train` returns: the training record, per epoch and per
    step.

    Attributes:
        history: dict like `keras.callbacks.History.history`: each key (loss,
            metrics, `val_*`, and `"<layer>/<measure>"` alignment measures at
            the end of each epoch) maps to a list with one value per epoch.
        steps: dict mapping each key to one value per training step, with
            the step numbers of this call (ints, from 1) under `"step"` and
            the epoch (an int) under `"epoch"`. Measures taken only every
            few steps hold NaN in between.
        epoch: the list of epoch indices.
        conservation_status: `{kernel: "holds" or "not applicable:
            <reason>"}`: the kernels with conservation measures, and why the
            others have none (see `keras_fa.alignment`).
        params: the loop's arguments.
        model: the trained model.
    """

    def __init__(self, model, params):
        self.model = model
        self.params = params
        self.history = {}
        self.steps = {}
        self.epoch = []
        self.conservation_status = {}

    def plot(self, directory, **kwargs):
        """Writes PNG figures of this history; see
        `keras_fa.plot_alignment`. Returns the paths written."""
        from keras_fa.plotting import plot_alignment

        return plot_alignment(self, directory, **kwargs)

    def _append(self, table, row):
        append_row(
            table,
            {
                key: value if key in _COUNTS else float(value)
                for key, value in row.items()
            },
        )

    def __repr__(self):
        return (
            f"AlignmentHistory(epochs={len(self.epoch)}, "
            f"steps={len(self.steps.get('step', []))}, "
            f"keys={sorted(self.history)})"
        )
