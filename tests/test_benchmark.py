import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, backend_environ


def test_step_benchmark_prints_pairs_per_second_as_last_json_line():
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "benchmark.py"),
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
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "benchmark.py"), "nonsense"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode != 0 and "Usage" in result.stderr


@pytest.mark.long
def test_pipeline_benchmark_and_show_views(tmp_path):
    # One run per command; the keras-cv views through the `views` command (the same
    # `data.two_view_dataset` path the pipeline and show_views commands take with the flag).
    from PIL import Image

    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "benchmark.py"), "pipeline"]
    cmd += ["--image_size", "16", "--batch_size", "8", "--batches", "2", "--warmup", "1"]
    run = dict(capture_output=True, text=True, timeout=600, cwd=ROOT)
    result = subprocess.run(cmd, **run)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["pairs_per_s"] > 0 and report["source"].startswith("embedded digits")
    out = tmp_path / "views.png"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "show_views.py"), f"--out={out}"]
    cmd += ["--num_images", "3", "--image_size", "16"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(out).size == (3 * 16, 3 * 16)  # original | view 1 | view 2, 3 rows
    views = [sys.executable, os.path.join(ROOT, "benchmarks", "benchmark.py"), "views"]
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
    stats = view_statistics(
        np.concatenate([gray, colour]),
        np.zeros((4, 3, 4, 4)),
        [0.2, 0.4, 0.6, 0.8],
        [1.0, 1.0, 0.75, 4 / 3],
    )
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


def test_flops_count_convolutions_and_dense_layers():
    import keras

    from simsiam_keras import flops

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)  # 4x4x4 out
    x = keras.layers.BatchNormalization()(x)  # not counted
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)])  # nested: counted
    outputs = keras.layers.Dense(5)(inner(keras.layers.GlobalAveragePooling2D()(x)))
    model = keras.Model(inputs, outputs)
    assert flops.forward_flops(model) == 2 * (4 * 4 * 3 * 3 * 3 * 4 + 4 * 6 + 6 * 5)


@pytest.mark.long
def test_gpu_check_runs_on_cpu_without_tensorflow(tmp_path):
    """benchmarks/gpu_check.sh at tiny sizes on the CPU, TensorFlow hidden as on the GPU image.

    Every runner must print its JSON line, and the FLOPs PyTorch counts for the reference
    (`torch.utils.flop_counter`) must equal this project's count of the same architecture.
    """
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "for name in ('tensorflow', 'tensorflow_datasets', 'keras_cv'):\n"
        "    sys.modules[name] = None  # not installed, as on the GPU image\n"
    )
    # The runners set KERAS_BACKEND each; backend_environ adds the tests' XLA flags for JAX's.
    env = backend_environ("jax", PYTHONPATH=str(tmp_path), PYTHON=sys.executable, WHEELS="")
    env.update(DEVICE="cpu", ARCH="resnet18_cifar", SIZE="16", WIDTH="0.125", BATCHES="4")
    env.update(STEPS="2", WARMUP="1", PEAK_MATMUL="128", ABLATIONS="0")
    script = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
    result = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["runner"] for line in lines] == [
        "torch_reference_b4",
        "keras_jax_b4",
        "keras_jax_device_augment_b4",
        "keras_torch_b4",
    ], result.stdout
    for line in lines:
        assert not line.get("failed"), line
        assert line.get("pairs_per_s", line.get("img_per_s")) > 0
        assert line["train_gflop_per_pair"] == pytest.approx(lines[0]["train_gflop_per_pair"])
    assert lines[1]["mixed_precision"] == "bfloat16" and lines[2]["augment_on"] == "device"
    assert 0 < lines[1]["utilisation_of_matmul_peak"] and lines[1]["matmul_peak_tflops"] > 0
