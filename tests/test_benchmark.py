import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
