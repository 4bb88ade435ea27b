"""A run's record of its epochs, `history.csv`, that stays whole across interrupts and resumes.

Keras's `CSVLogger` fixes its columns at the first epoch of each process and appends rows under
the header it found. A resumed run whose first epoch logs other numbers (the kNN monitor runs
every N epochs) then writes rows that no longer match the header. Here the rows are kept in
memory, one per epoch; the columns are the union of every epoch's numbers, in a fixed order;
and the whole file is written to a temporary name and renamed at every epoch end, so a kill
at any moment leaves the previous complete file.

Only whole epochs are recorded: an epoch cut short by an interrupt or a NaN loss writes no row
(the resumed run trains its remaining steps and writes it then). `EpochHistory.load` drops the
rows at and after the epoch a run resumes in, and reads, and repairs, a file that an earlier
version wrote with `CSVLogger` (rows longer or shorter than their header).

The file has Keras's layout: an `epoch` column counted from 0, then one column per number,
empty where an epoch has none.
"""

import csv
import io
import math
import os

import keras
import numpy as np

FILE = "history.csv"
# The usual columns first, in this order; any other number follows in alphabetical order.
ORDER = ("loss", "z_std", "lr", "probe_z_std", "feature_rank", "z_rank", "knn_top1", "knn_top5")
# The numbers the kNN monitor adds on some epochs only (what made CSVLogger rows misalign).
_SOMETIMES = ("knn_top1", "knn_top5")


def _number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _keras_csv_keys(header_keys, width):
    """The columns of a `CSVLogger` row of `width` values under a header of `header_keys`.

    `CSVLogger` writes `["epoch"] + sorted(keys)`, followed by `val_<key>` for each key when the
    first epoch had no validation numbers; a resumed process keeps the file's header but writes
    its own first epoch's keys. They differ only in the kNN numbers.
    """
    half = len(header_keys) // 2
    doubled = len(header_keys) % 2 == 0 and list(header_keys[half:]) == [
        f"val_{k}" for k in header_keys[:half]
    ]
    base = list(header_keys[:half]) if doubled else list(header_keys)
    core = [k for k in base if k not in _SOMETIMES]
    count = (width - 1) // 2 if doubled else width - 1
    extra = count - len(core)
    if not 0 <= extra <= len(_SOMETIMES) or (doubled and (width - 1) % 2):
        return None
    keys = sorted(core + list(_SOMETIMES[:extra]))
    return ["epoch"] + keys + ([f"val_{k}" for k in keys] if doubled else [])


def numbers(logs):
    """The entries of a Keras `logs` dict that are numbers (tensors and arrays as their mean)."""
    found = {}
    for name, value in (logs or {}).items():
        try:
            found[name] = float(np.mean(keras.ops.convert_to_numpy(value)))
        except (TypeError, ValueError):
            continue
    return found


class EpochHistory:
    """The per-epoch numbers of a run, keyed by epoch (from 0), written whole to `path`.

    Args:
        path: the CSV file.
        rows: `{epoch: {name: float or None}}` to start from.
    """

    def __init__(self, path, rows=None):
        self.path = path
        self.rows = dict(rows or {})

    @classmethod
    def load(cls, path, before_epoch=None):
        """The record in `path` (empty if there is none), with epochs < `before_epoch` only.

        Raises:
            ValueError: a file whose rows cannot be matched to columns.
        """
        try:
            with open(path, newline="") as f:
                table = list(csv.reader(f))
        except FileNotFoundError:
            return cls(path)
        table = [row for row in table if row]
        rows = {}
        if table:
            header = table[0]
            if not header or header[0] != "epoch":
                raise ValueError(f"{path} is not a history file (its first column is not epoch).")
            for line, values in enumerate(table[1:], 2):
                names = header
                if len(values) != len(header):  # written by CSVLogger after a resume
                    names = _keras_csv_keys(header[1:], len(values))
                if names is None or not values[0].strip().isdigit():
                    raise ValueError(
                        f"{path}, line {line}, does not match its header; move the file away "
                        "and run the same command (the weights are in the checkpoints; the "
                        "epochs before the resume are then not in the new file)."
                    )
                # An epoch written twice (a CSVLogger row of an epoch cut short): the last wins.
                rows[int(values[0])] = {
                    n: _number(v) for n, v in zip(names[1:], values[1:], strict=True)
                }
        if before_epoch is not None:
            rows = {e: r for e, r in rows.items() if e < before_epoch}
        return cls(path, rows)

    def record(self, epoch, logs):
        """Stores the numbers of `logs` as epoch `epoch`'s row (replacing any earlier one)."""
        self.rows[int(epoch)] = numbers(logs)

    def columns(self):
        """The columns with a value in at least one epoch: `ORDER` first, then alphabetical."""
        present = {n for row in self.rows.values() for n, v in row.items() if v is not None}
        return [n for n in ORDER if n in present] + sorted(present - set(ORDER))

    def text(self):
        """The CSV text of the record."""
        columns = self.columns()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["epoch", *columns])
        for epoch in sorted(self.rows):
            row = self.rows[epoch]
            writer.writerow([epoch, *("" if row.get(n) is None else repr(row[n]) for n in columns)])
        return out.getvalue()

    def write(self):
        """Writes the whole record to `path` atomically (a temporary file, then a rename)."""
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            f.write(self.text())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return self.path

    def as_dict(self):
        """`{name: [float or None], f"{name}_epochs": [epoch from 1]}` for `report.plot_history`."""
        epochs = sorted(self.rows)
        history = {}
        for name in self.columns():
            history[name] = [self.rows[e].get(name) for e in epochs]
            history[f"{name}_epochs"] = [e + 1 for e in epochs]
        return history

    def last(self):
        """Each number's value at the last epoch that has one."""
        final = {}
        for epoch in sorted(self.rows):
            final.update({n: v for n, v in self.rows[epoch].items() if v is not None})
        return final


class EpochSteps(keras.callbacks.Callback):
    """A callback that knows whether the epoch that ends ran all its steps.

    `fit` calls `on_epoch_end` also for an epoch cut short by `model.stop_training` (an
    interrupt, a NaN loss); `epoch_complete()` tells the two apart by counting the steps.
    Subclasses that override `on_epoch_begin` or `on_train_batch_end` call `super()`.
    """

    def __init__(self):
        super().__init__()
        self._steps_in_epoch = 0
        self._stopped_before_epoch = False

    def on_epoch_begin(self, epoch, logs=None):
        self._steps_in_epoch = 0
        self._stopped_before_epoch = bool(getattr(self.model, "stop_training", False))

    def on_train_batch_end(self, batch, logs=None):
        self._steps_in_epoch += 1

    def epoch_complete(self):
        """Whether the epoch ran every step `fit` planned for it."""
        steps = (self.params or {}).get("steps")
        if steps:
            return self._steps_in_epoch >= steps
        stopped = bool(getattr(self.model, "stop_training", False))
        return not stopped or self._stopped_before_epoch


class HistoryLogger(EpochSteps):
    """Records each whole epoch's logs in an `EpochHistory` and writes its file.

    Put it after the monitors in `callbacks`, so that their numbers are in the logs, and before
    the checkpoint callback, so that a checkpoint at an epoch's end is never ahead of the file.

    Args:
        history: the run's `EpochHistory` (from `EpochHistory.load` when resuming).
        write: whether this process writes the file (the chief, under multi-worker training).
    """

    def __init__(self, history, write=True):
        super().__init__()
        self.history = history
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        if not self.epoch_complete():
            return
        self.history.record(epoch, logs)
        if self.write:
            self.history.write()
