"""Per-view statistics of an augmentation pipeline, the same formulas for every side.

NumPy only: `benchmarks/torch_reference.py views` (torchvision) and `benchmarks/benchmark.py
views` (this package, either `--augment_impl`) both call `view_statistics`.
"""

import numpy as np


def view_statistics(views1, views2, areas, aspects):
    """A dict of statistics of two views per image and of the crops drawn for them.

    Args:
        views1: the first views, [N, 3, H, W] in [0, 1].
        views2: the second views of the same images.
        areas: crop areas as fractions of each image's area.
        aspects: crop aspect ratios (width / height, in pixels).
    """
    v1, v2 = np.asarray(views1, np.float64), np.asarray(views2, np.float64)
    gray = np.abs(np.diff(v1, axis=1)).reshape(len(v1), -1).max(axis=1) < 1e-3
    q = lambda x: [round(float(v), 4) for v in np.quantile(x, [0.1, 0.5, 0.9])]  # noqa: E731
    return {
        "channel_mean": [round(float(m), 4) for m in v1.mean(axis=(0, 2, 3))],
        "channel_std": [round(float(s), 4) for s in v1.std(axis=(0, 2, 3))],
        "image_std": round(float(v1.reshape(len(v1), -1).std(axis=1).mean()), 4),
        "grayscale_fraction": round(float(gray.mean()), 4),
        "mean_abs_view_difference": round(float(np.abs(v1 - v2).mean()), 4),
        "crop_area_mean": round(float(np.mean(areas)), 4),
        "crop_area_q10_50_90": q(areas),
        "crop_aspect_q10_50_90": q(aspects),
    }
