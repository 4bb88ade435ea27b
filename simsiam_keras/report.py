"""Results for people: a JSON file and a PNG plot of the training curves in the workdir."""

import csv
import json
import math
import os

PLOTTED = ("loss", "z_std", "probe_z_std", "knn_top1", "val_top1", "top1")


def write_json(path, results):
    """Writes `results` (JSON-serialisable; NumPy scalars are converted) atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(
            results, f, indent=2, default=lambda x: x.item() if hasattr(x, "item") else str(x)
        )
    os.replace(tmp, path)
    return path


def plot_history(history, path, title="SimSiam"):
    """A PNG with one panel per logged curve of `history` (a `History.history` dict).

    Plots those of loss, z_std, probe_z_std, knn_top1, top1 and val_top1 that are present;
    epochs without a value (kNN every N epochs) are skipped, not drawn as zero.

    Returns:
        `path`, or None when there is nothing to plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in PLOTTED if any(v is not None for v in history.get(n) or ())]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        values = history[name]
        epochs = history.get(f"{name}_epochs", range(1, len(values) + 1))
        points = [(e, v) for e, v in zip(epochs, values) if v is not None and not math.isnan(v)]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def read_csv_history(path):
    """The epochs of a `CSVLogger` file as a `plot_history` dict, across resumed runs.

    A resumed run appends to the file, so it holds every epoch, where the `History` of the
    last process holds only its own. Columns that are empty or "NA" on an epoch (the kNN
    monitor runs every N epochs) give None there.

    Returns:
        `{column: [float or None], f"{column}_epochs": [epoch numbers from 1]}`, or None when
        the file is missing or has no rows.
    """
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return None
    if not rows:
        return None

    def number(text):
        try:
            value = float(text)
        except (TypeError, ValueError):
            return None
        return None if math.isnan(value) else value

    epochs = [int(row["epoch"]) + 1 for row in rows]
    history = {}
    for name in rows[0]:
        if name != "epoch":
            history[name] = [number(row.get(name)) for row in rows]
            history[f"{name}_epochs"] = epochs
    return history


def json_line(results):
    """`results` as one JSON line (the last line scripts print)."""
    return json.dumps(results, default=lambda x: x.item() if hasattr(x, "item") else str(x))
