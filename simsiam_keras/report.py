"""Results for people: a JSON file and a PNG plot of the training curves in the workdir."""

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

    names = [n for n in PLOTTED if history.get(n)]
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


def json_line(results):
    """`results` as one JSON line (the last line scripts print)."""
    return json.dumps(results, default=lambda x: x.item() if hasattr(x, "item") else str(x))
