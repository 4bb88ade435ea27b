"""The user's path through the scripts: workdirs, reruns, interrupts, quiet logs, bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from simsiam_keras import checkpoint, cli
from tests.helpers import (
    COMMANDS,
    ROOT,
    SMALL_PRETRAIN,
    SignalOnLine,
    last_json,
    run_command,
    run_script,
    user_environ,
)

SMALL = [*SMALL_PRETRAIN, "--batch_size=32", "--export=false"]  # later flags win
# What stderr must not hold on a plain run (each was seen there before).
NOISE = [
    r"I0000 ",
    r"absl::InitializeLog",
    r"cuInit",
    r"shuffle=True",
    r"ran out of data",
    r"Traceback",
    r"^[IWE]\d{4} ",
]


def _script(name, *args, cwd=ROOT, timeout=600):
    return run_script(name, *args, cwd=cwd, timeout=timeout)


def _command(name, *args, cwd=ROOT):
    return run_command(name, *args, cwd=cwd)


def _files(directory):
    found = {}
    for base, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, directory)] = f.read()
    return found


def _folder(path, n=64, size=16):
    rng = np.random.default_rng(0)
    for i in range(n):
        os.makedirs(path / f"c{i % 2}", exist_ok=True)
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path / f"c{i % 2}" / f"{i}.png")
    return path


def test_default_workdir_names():
    assert cli.default_workdir(["p.py"]) == os.path.join("runs", "default")
    assert cli.default_workdir(["p.py", "--flagfile=configs/in1k.cfg"]) == os.path.join(
        "runs", "in1k"
    )
    argv = ["p.py", "--flagfile", "a/cifar10.cfg", "--epochs=3"]
    assert cli.default_workdir(argv) == os.path.join("runs", "cifar10")


def test_a_workdir_is_never_damaged_and_a_finished_run_is_not_rerun(tmp_path):
    # The flagfile names the default workdir; the run is quiet on stderr; its config and
    # summary hold resolved values and the real source.
    images = _folder(tmp_path / "images")
    flagfile = tmp_path / "mine.cfg"
    flags = [*SMALL, f"--train_dir={images}", "--epochs=1", "--export=true"]  # export: quiet too
    flagfile.write_text("\n".join(flags) + "\n")
    first = _script("pretrain", f"--flagfile={flagfile}", cwd=tmp_path)
    summary = last_json(first)
    for pattern in NOISE:
        assert not re.search(pattern, first.stderr, re.M), (pattern, first.stderr[-2000:])
    work = tmp_path / "runs" / "mine"
    assert summary["train"] == str(images) and summary["steps"] == 2
    config = json.loads((work / "config.json").read_text())
    assert config["projector_layers"] == 2 and config["blur"] is False
    assert "epoch 1/1  2/2 (100%)" in first.stdout  # the epoch's progress line
    before = _files(work)

    # Rerunning the finished run: says so, prints its summary, changes nothing.
    again = _command("pretrain", f"--flagfile={flagfile}", cwd=tmp_path)
    assert "is finished" in again.stdout
    rerun = last_json(again)
    assert rerun["already_finished"] and rerun["steps"] == 2
    assert _files(work) == before

    # Another run's flags: one line naming the flags that differ; nothing written.
    other = _command("pretrain", f"--flagfile={flagfile}", "--width=0.25", "--seed=3", cwd=tmp_path)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1 and "--width=0.125 (now 0.25)" in lines[0] and "--seed=0" in lines[0]
    assert "new --workdir" in lines[0]
    assert _files(work) == before

    # Raising --epochs continues the finished run.
    continued = _command("pretrain", f"--flagfile={flagfile}", "--epochs=2", cwd=tmp_path)
    assert "(step 2 of 4)" in continued.stdout
    more = last_json(continued)
    assert more["steps"] == 4 and not more.get("already_finished")


def _interrupt(args, signum, after_step):
    """Starts pretrain.py, signals it once it logged step `after_step`; returns the step."""
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "pretrain.py"), *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=user_environ()
    )
    seen, deadline = [], time.time() + 300
    while time.time() < deadline:  # wait for the step's progress line
        line = proc.stdout.readline()
        seen.append(line)
        if re.match(rf"epoch 1/1  {after_step}/40 ", line):
            break
        assert line, "".join(seen) + proc.stderr.read()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, err
    # One line: no traceback, no TensorFlow log lines.
    assert err.strip().count("\n") == 0, err
    match = re.fullmatch(
        r"Interrupted at step (\d+); run the same command to resume\.", err.strip()
    )
    assert match, err
    return int(match.group(1)), "".join(seen) + out


@pytest.mark.long
def test_interrupts_save_say_one_line_and_the_rerun_resumes(tmp_path):
    # Ctrl-C (SIGINT, 130) in a process of its own, then SIGTERM (143, a cluster's pre-emption)
    # on the resumed run in this process, then the same command finishes the run.
    work = tmp_path / "run"
    args = [
        *SMALL,
        f"--workdir={work}",
        "--epochs=1",
        "--steps_per_epoch=40",
        "--checkpoint_every=1000",
        "--progress_every_s=0",
    ]
    first, _ = _interrupt(args, signal.SIGINT, after_step=3)
    assert 3 <= first < 40
    found = checkpoint.latest(str(work / "checkpoints"))
    assert found and checkpoint.read_state(found)["step"] == first  # saved although not due
    after = f"epoch 1/1  {first + 2}/40 "
    stream = SignalOnLine(lambda line: line.startswith(after), signal.SIGTERM)
    terminated = run_command("pretrain", *args, stdout=stream)
    assert terminated.returncode == 143 and f"(step {first} of 40)" in terminated.stdout
    match = re.fullmatch(
        r"Interrupted at step (\d+); run the same command to resume\.", terminated.stderr.strip()
    )
    second = int(match.group(1))
    assert first + 2 <= second < 40
    assert checkpoint.read_state(checkpoint.latest(str(work / "checkpoints")))["step"] == second
    resumed = _command("pretrain", *args)
    assert f"(step {second} of 40)" in resumed.stdout
    assert last_json(resumed)["steps"] == 40


SCRIPTS_WITH_A_BAD_PATH = {
    "pretrain": ["--train_dir=/no/such/folder"],
    "knn_eval": ["--pretrained=/no/such/model.keras"],
    "linear_eval": ["--pretrained=/no/such/model.keras"],
    "show_views": ["--train_dir=/no/such/folder"],
    "export": ["--workdir=/no/such/run"],
    "make_jpeg_folder": ["--src=/no/such/folder", "--out=/tmp/simsiam_never_written"],
    "benchmark": ["pipeline", "--train_dir=/no/such/folder"],
    "convert_checkpoint": ["--from_torch=/no/such/checkpoint.pth.tar", "--output=/tmp/x.keras"],
}


@pytest.mark.parametrize("name", sorted(SCRIPTS_WITH_A_BAD_PATH))
def test_every_script_fails_with_one_line_on_a_bad_path(name):
    # The commands in this process; the other scripts (their own absl mains) in one each.
    if name in COMMANDS:
        result = _command(name, *SCRIPTS_WITH_A_BAD_PATH[name])
    else:
        result = _script(name, *SCRIPTS_WITH_A_BAD_PATH[name], timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{name}.py: "), result.stderr
    assert "/no/such" in lines[0]


@pytest.mark.parametrize(
    "command, args",
    [
        ("simsiam-pretrain", ["--train_dir=/no/such/dir"]),
        ("simsiam-linear-eval", ["--pretrained=/no/such/model.keras"]),
        ("simsiam-knn-eval", ["--pretrained=/no/such/model.keras"]),
        ("simsiam-export", ["--workdir=/no/such/run"]),
        ("simsiam-convert", ["--to_torch=/no/such/run", "--output=/tmp/x.pth.tar"]),
    ],
)
def test_the_installed_commands_are_the_scripts(command, args):
    # `pip install -e .` installs the console entry points beside this Python; each calls the
    # function its script calls. One of them runs in a process of its own.
    path = os.path.join(os.path.dirname(sys.executable), command)
    assert os.path.exists(path), f"{command} is not installed: pip install -e ."
    function = {"simsiam-convert": "convert"}.get(command, command[8:].replace("-", "_"))
    assert f"from simsiam_keras.commands import {function}" in open(path).read()
    if command != "simsiam-pretrain":
        return
    result = subprocess.run(
        [path, *args], capture_output=True, text=True, timeout=300, env=user_environ()
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"{command}: ") and "/no/such" in result.stderr


@pytest.mark.parametrize(
    "name, flag",
    [
        ("pretrain", "--[no]stop_gradient"),
        ("linear_eval", "--protocol"),
        ("knn_eval", "--temperature"),
        ("export", "--[no]checkpoint"),
    ],
)
def test_helpshort_lists_the_scripts_flags(name, flag):
    # What the one-line errors point to ("see --helpshort").
    result = _command(name, "--helpshort")
    assert flag in result.stdout, result.stdout[-2000:]


def test_a_flag_typo_is_one_line_with_a_suggestion():
    result = _command("pretrain", "--epoch=3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pretrain.py: Unknown command line flag 'epoch'. Did you mean: epochs ? (see --helpshort)."
    ]


def test_a_corrupt_config_json_stops_with_one_line(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    (work / "config.json").write_text('{"workdir": ')  # damaged by hand (ours are atomic)
    result = _command("pretrain", *SMALL, f"--workdir={work}", "--epochs=1")
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines() == [result.stderr.strip()]
        and "config.json is not valid JSON" in result.stderr
    )
    assert (work / "config.json").read_text() == '{"workdir": '
