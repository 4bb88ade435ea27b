"""Results for people: progress lines, a JSON file and a PNG plot of the training curves."""

import json
import math
import os
import sys
import time

PLOTTED = ("loss", "z_std", "feature_rank", "z_rank", "knn_top1", "val_top1", "top1")


def write_json(path, results):
    """Writes `results` (JSON-serialisable; NumPy scalars are converted) atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(
            results, f, indent=2, default=lambda x: x.item() if hasattr(x, "item") else str(x)
        )
    os.replace(tmp, path)
    return path


def write_text(path, text):
    """Writes `text` to `path` atomically (a temporary file, then a rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def plot_history(history, path, title="SimSiam", references=None):
    """A PNG with one panel per logged curve of `history` (a `History.history` dict).

    Plots those of loss, z_std, feature_rank, z_rank, knn_top1, top1 and val_top1 that are
    present; epochs without a value (kNN every N epochs) are skipped, not drawn as zero.

    Args:
        history: `{name: [value or None]}`, optionally `{f"{name}_epochs": [epoch]}`.
        path: the PNG to write.
        title: the figure's title.
        references: optional `{name: (value, label)}`: a dashed level in that panel, e.g. the
            random-init encoder's kNN top-1.

    Returns:
        `path`, or None when there is nothing to plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = [n for n in PLOTTED if any(v is not None for v in history.get(n) or ())]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        values = history[name]
        epochs = history.get(f"{name}_epochs", range(1, len(values) + 1))
        points = [(e, v) for e, v in zip(epochs, values) if v is not None and not math.isnan(v)]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        if len(points) <= 3:  # a short run: the values themselves, not an axis of round-off
            ax.margins(y=0.25)
            for e, v in points:
                ax.annotate(
                    f"{v:.4g}",
                    (e, v),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=8,
                )
        if name in (references or {}) and references[name][0] is not None:
            value, label = references[name]
            ax.axhline(value, color="gray", linestyle="--", linewidth=1, label=label)
            ax.legend(fontsize=8)
        xs = sorted({e for e, _ in points})
        if 0 < len(xs) <= 10:
            ax.set_xticks(xs)
            ax.set_xlim(xs[0] - 0.5, xs[-1] + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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


def _duration(seconds):
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """A progress line for long work: `what  done/total (pct)  rate  ETA  fields`.

    On a terminal the line is rewritten in place (at most every 0.2 s); elsewhere (a log file,
    CI) one line is printed every `every_s` seconds, so that an hour-long epoch still shows
    that it moves. `done()` prints the final line.

    Args:
        what: what is being counted, e.g. "epoch 3/100".
        total: the number of units of the whole work (None: unknown, no ETA).
        unit: the rate's unit, e.g. "pairs/s"; `units_per_step` converts steps to it.
        units_per_step: units per counted step (the batch size for pairs/s).
        every_s: seconds between lines when not on a terminal.
        stream: where to write (default: stdout).
    """

    def __init__(
        self, what, total=None, unit="steps/s", units_per_step=1, every_s=30.0, stream=None
    ):
        self.what = what
        self.total = total
        self.unit = unit
        self.units_per_step = units_per_step
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last = self.start
        self.width = 0

    def line(self, done, fields=None, ran=None, until=None):
        """The progress line after `done` steps, with `fields` (name -> number) appended.

        `ran`: the steps this object has seen run, when `done` counts earlier ones too (a
        resumed epoch); rate and ETA are measured on them. `until`: the `time.monotonic()` at
        which the steps ended (default: now), when other work followed them.
        """
        ran = done if ran is None else ran
        elapsed = (time.monotonic() if until is None else until) - self.start
        parts = [self.what]
        if self.total:
            parts.append(f"{done}/{self.total} ({100 * done / self.total:.0f}%)")
        else:
            parts.append(f"{done}")
        if ran > 0 and elapsed > 0:
            parts.append(f"{ran * self.units_per_step / elapsed:.1f} {self.unit}")
            if self.total and done < self.total:
                parts.append(f"ETA {_duration(elapsed * (self.total - done) / ran)}")
            else:
                parts.append(f"{_duration(elapsed)}")
        for name, value in (fields or {}).items():
            parts.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
        return "  ".join(parts)

    def due(self):
        """Whether `update` would print now (check it before computing costly `fields`)."""
        return time.monotonic() - self.last >= (0.2 if self.tty else self.every_s)

    def update(self, done, fields=None, ran=None):
        """Shows the progress after `done` steps, if it is time to."""
        if not self.due():
            return
        self.last = time.monotonic()
        self._write(self.line(done, fields, ran), final=False)

    def done(self, done, fields=None, ran=None, until=None):
        """The final line (always printed)."""
        self._write(self.line(done, fields, ran, until), final=True)

    def _write(self, text, final):
        if self.tty:
            padded = text.ljust(self.width)
            self.width = len(text)
            self.stream.write("\r" + padded + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
