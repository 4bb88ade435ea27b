import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT


def test_step_benchmark_prints_pairs_per_second_as_last_json_line():
    cmd = [
        sys.executable,
        os.path.join(ROOT, "scripts", "benchmark.py"),
        "step",
        "--backbone",
        "resnet18_cifar",
        "--image_size",
        "16",
        "--batch_size",
        "8",
        "--width",
        "0.125",
        "--dim",
        "32",
        "--pred_dim",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["pairs_per_s"] > 0 and report["batch_size"] == 8
    assert report["backend"] == os.environ.get("KERAS_BACKEND", "tensorflow")


def test_benchmark_rejects_unknown_command():
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "nonsense"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode != 0 and "Usage" in result.stderr


def test_pipeline_benchmark_and_show_views(tmp_path):
    from PIL import Image

    cmd = [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "pipeline"]
    cmd += ["--image_size", "16", "--batch_size", "8", "--batches", "2", "--warmup", "1"]
    run = dict(capture_output=True, text=True, timeout=600, cwd=ROOT)
    result = subprocess.run(cmd, **run)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["pairs_per_s"] > 0 and report["source"].startswith("embedded digits")
    result = subprocess.run(cmd + ["--augment_impl", "kerascv"], **run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["augment_impl"] == "kerascv"
    out = tmp_path / "views.png"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "show_views.py"), f"--out={out}"]
    cmd += ["--num_images", "3", "--image_size", "16"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(out).size == (3 * 16, 3 * 16)  # original | view 1 | view 2, 3 rows
    result = subprocess.run(cmd + ["--augment_impl=kerascv"], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    views = [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "views"]
    views += ["--image_size=16", "--batch_size=8", "--batches=2", "--augment_impl=kerascv"]
    result = subprocess.run(views, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["images"] == 16 and 0.2 <= stats["crop_area_q10_50_90"][0] <= 1


def test_view_statistics_formulas():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # shared with the PyTorch reference
    from view_stats import view_statistics

    gray = np.full((2, 3, 4, 4), 0.5)
    colour = np.zeros((2, 3, 4, 4))
    colour[:, 0] = 1.0  # red
    stats = view_statistics(np.concatenate([gray, colour]), np.zeros((4, 3, 4, 4)),
                            [0.2, 0.4, 0.6, 0.8], [1.0, 1.0, 0.75, 4 / 3])  # fmt: skip
    assert stats["grayscale_fraction"] == 0.5
    assert stats["channel_mean"] == [0.75, 0.25, 0.25]
    assert stats["mean_abs_view_difference"] == pytest.approx((0.5 * 2 + 1 / 3 * 2) / 4, abs=1e-4)
    assert stats["crop_area_mean"] == 0.5 and stats["crop_area_q10_50_90"][1] == 0.5


def test_make_jpeg_folder(tmp_path):
    src = tmp_path / "src" / "cat"
    src.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(src / "a.png")
    Image.new("RGB", (32, 32), (10, 10, 200)).save(src / "b.png")
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "make_jpeg_folder.py")]
    cmd += [f"--src={tmp_path / 'src'}", f"--out={tmp_path / 'out'}", "--per_class=2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = sorted(Image.open(p).size for p in (tmp_path / "out" / "cat").iterdir())
    assert sizes == [(375, 500), (500, 375)]
