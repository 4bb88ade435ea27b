"""The CPU learning protocol's curves, this package beside the PyTorch reference, in one PNG.

    python benchmarks/learning_curves.py --out docs/learning_cifar10_cpu.png \
        keras_seed0=benchmarks/results/cifar10_cpu_keras_seed0.csv \
        torch_seed0=benchmarks/results/cifar10_cpu_torch_seed0.jsonl

Each run is `LABEL=FILE`: a pretraining run's `history.csv` (epochs from 0) or the JSON lines
`benchmarks/torch_reference.py train` prints (epochs from 1). Panels: kNN top-1, loss, the
effective rank of the backbone features and of z, per epoch (counted from 1); a dashed line at
each run's random-init kNN top-1 (BN statistics recomputed) where the file has it.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simsiam_keras import history  # noqa: E402


def read_history(path):
    """`(rows, random_init_knn)`: rows are dicts with `epoch` counted from 1."""
    if path.endswith(".csv"):  # the package's own reader of history.csv
        record = history.EpochHistory.load(path).rows
        return [{**record[e], "epoch": e + 1} for e in sorted(record)], None
    rows, init = [], None
    with open(path) as f:
        for line in f:
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if "epoch" in entry and "what" not in entry:
                rows.append(entry)
            elif "knn_top1_init_recalibrated" in entry and "what" not in entry:
                init = entry["knn_top1_init_recalibrated"]
    return rows, init


def main():
    """Parses `LABEL=FILE` runs and writes the PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=FILE")
    parser.add_argument("--out", required=True)
    parser.add_argument("--init", action="append", default=[], help="LABEL=random-init kNN")
    args = parser.parse_args()
    inits = dict(item.split("=", 1) for item in args.init)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ("knn_top1", "loss", "feature_rank", "z_rank")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for run in args.runs:
        label, path = run.split("=", 1)
        rows, init = read_history(path)
        init = float(inits.get(label, init)) if inits.get(label, init) is not None else None
        for ax, name in zip(axes, panels):
            points = [(r["epoch"], r[name]) for r in rows if r.get(name) is not None]
            (line,) = ax.plot(*zip(*points), marker="o", markersize=2.5, label=label)
            if name == "knn_top1" and init is not None:
                ax.axhline(init, color=line.get_color(), linestyle="--", linewidth=0.8)
    for ax, name in zip(axes, panels):
        ax.set_title(name + (" (dashed: random init)" if name == "knn_top1" else ""))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(args.out)


if __name__ == "__main__":
    main()
