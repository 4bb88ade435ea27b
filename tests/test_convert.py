"""Checkpoints of the official PyTorch code <-> Keras (simsiam_keras.convert), on every backend.

The PyTorch side is tests/torch_official.py: torchvision's ResNet and simsiam/builder.py with
the official module names, random weights, random BN running statistics and a random `fc.6`
bias, saved as main_simsiam.py / main_lincls.py / torch.save(state_dict) save them.
"""

import argparse

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import keras  # noqa: E402

import simsiam_keras as sk  # noqa: E402
from simsiam_keras import convert  # noqa: E402
from tests import torch_official as official  # noqa: E402
from tests.helpers import last_json, run_command  # noqa: E402

WIDTH, DIM, PRED_DIM, SIZE = 0.125, 32, 8, 32


def _images(seed):
    return np.random.default_rng(seed).normal(size=(4, SIZE, SIZE, 3)).astype("float32")


def _nchw(x):
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _max_diff(keras_value, torch_value):
    return float(np.abs(keras.ops.convert_to_numpy(keras_value) - torch_value.numpy()).max())


def _official_simsiam(arch, layers, seed=0):
    torch.manual_seed(seed)
    return official.randomize(official.SimSiam(arch, WIDTH, DIM, PRED_DIM, layers), seed + 1)


def _randomized(model, seed=0):
    """`model` with every variable random, BN moving statistics included."""
    rng = np.random.default_rng(seed)
    for v in model.variables:
        positive = "variance" in v.path
        v.assign(rng.uniform(0.5, 1.5, v.shape) if positive else rng.normal(0, 0.2, v.shape))
    return model


def _assert_same_variables(model, other):
    assert type(other) is type(model) and len(other.variables) == len(model.variables)
    for before, after in zip(model.variables, other.variables):
        assert before.path.split("/")[-2:] == after.path.split("/")[-2:]
        before, after = keras.ops.convert_to_numpy(before), keras.ops.convert_to_numpy(after)
        np.testing.assert_array_equal(before, after)


# The conversion is NumPy and Keras's own layers, the same on every backend.
@pytest.mark.parametrize("arch, layers", [("resnet50", 3), ("resnet18_cifar", 2)])
def test_main_simsiam_checkpoint_gives_pytorchs_outputs(tmp_path, arch, layers):
    ref = _official_simsiam(arch, layers).eval()
    # A CIFAR port of main_simsiam.py records torchvision's name, "resnet18".
    path = official.save_main_simsiam(
        ref, tmp_path / "checkpoint_0099.pth.tar", arch.replace("_cifar", "")
    )
    model = convert.from_torch(str(path))
    assert isinstance(model, sk.SimSiam) and model.backbone.name == arch
    assert (model.dim, model.pred_dim, model.projector_layers) == (DIM, PRED_DIM, layers)
    x1, x2 = _images(1), _images(2)
    with torch.no_grad():
        ref_outputs = ref(_nchw(x1), _nchw(x2))  # p1, p2, z1, z2
        features = ref.encoder.features(_nchw(x1))
    outputs = model((x1, x2), training=False)
    diffs = {k: _max_diff(outputs[k], t) for k, t in zip(("p1", "p2", "z1", "z2"), ref_outputs)}
    diffs["features"] = _max_diff(model.backbone(x1, training=False), features)
    print(f"\n{arch} max abs diff vs PyTorch (eval):", diffs)
    assert max(diffs.values()) < 1e-4, diffs
    # The folded fc bias mattered: it is far from zero.
    assert ref.encoder.fc[3 * (layers - 1)].bias.abs().max() > 0.3


def test_main_lincls_and_plain_state_dict(tmp_path):
    torch.manual_seed(0)
    ref = official.randomize(official.resnet("resnet18", WIDTH, num_classes=10), 1).eval()
    x = _images(3)
    with torch.no_grad():
        logits, features = ref(_nchw(x)), ref.features(_nchw(x))

    classifier = convert.from_torch(
        official.save_main_lincls(ref, tmp_path / "lin.pth.tar", "resnet18")
    )
    assert isinstance(classifier, sk.LinearClassifier) and classifier.num_classes == 10
    backbone_path = official.save_state_dict(ref, tmp_path / "resnet18.pth")
    state, architecture = convert.load_official(str(backbone_path))
    assert architecture.kind == "backbone" and architecture.ignored == ("fc.weight", "fc.bias")
    backbone = convert.build_keras(state, architecture, image_size=SIZE)
    diffs = {
        "logits": _max_diff(classifier(x, training=False), logits),
        "features": _max_diff(backbone(x, training=False), features),
    }
    print("\nresnet18 main_lincls / state_dict max abs diff vs PyTorch (eval):", diffs)
    assert max(diffs.values()) < 1e-4, diffs
    assert backbone.input_shape == (None, SIZE, SIZE, 3)
    convert.to_torch(classifier, tmp_path / "back.pth.tar")  # main_lincls.py's keys again
    _assert_same_variables(classifier, convert.from_torch(str(tmp_path / "back.pth.tar")))


def test_keras_to_torch_to_keras_is_exact(tmp_path):
    backbone = sk.build_resnet("resnet18_cifar", width=WIDTH)
    model = _randomized(sk.SimSiam(backbone, DIM, PRED_DIM, projector_layers=2))
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "model.keras")  # a pretraining workdir
    architecture = convert.to_torch(str(tmp_path / "run"), tmp_path / "back.pth.tar", epoch=7)
    assert architecture == convert.Architecture(
        "simsiam", "resnet18_cifar", WIDTH, DIM, PRED_DIM, 2
    )

    checkpoint = torch.load(tmp_path / "back.pth.tar", map_location="cpu", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["arch"]) == (7, "resnet18_cifar")
    state = checkpoint["state_dict"]
    ref = official.SimSiam("resnet18_cifar", WIDTH, DIM, PRED_DIM, projector_layers=2)
    expected = {f"module.{k}": v for k, v in ref.state_dict().items()}
    assert list(state) == list(expected)  # torchvision's key order, nothing more or less
    assert all(state[k].dtype == v.dtype and state[k].shape == v.shape for k, v in expected.items())
    assert not state["module.encoder.fc.3.bias"].any()
    np.testing.assert_array_equal(
        state["module.encoder.fc.4.running_mean"].numpy(),
        keras.ops.convert_to_numpy(model.projector.get_layer("projector_bn_2").moving_mean),
    )
    # PyTorch reads it strictly and computes what Keras computes.
    ref.load_state_dict({k[len("module.") :]: v for k, v in state.items()})
    ref.eval()
    x1, x2 = _images(4), _images(5)
    with torch.no_grad():
        p1, _, z1, _ = ref(_nchw(x1), _nchw(x2))
    outputs = model((x1, x2), training=False)
    diffs = {"p1": _max_diff(outputs["p1"], p1), "z1": _max_diff(outputs["z1"], z1)}
    print("\nKeras -> PyTorch max abs diff (eval):", diffs)
    assert max(diffs.values()) < 1e-4, diffs

    _assert_same_variables(model, convert.from_torch(str(tmp_path / "back.pth.tar")))


@pytest.mark.parametrize("arch", ["resnet50", "resnet18_cifar"])
def test_main_lincls_pretrained_loads_the_backbone(tmp_path, arch):
    backbone = _randomized(sk.build_resnet(arch, width=WIDTH))
    if arch == "resnet50":  # a backbone alone: module.encoder.* without fc
        source = backbone
    else:  # a whole SimSiam: main_lincls drops module.encoder.fc and module.predictor
        source = sk.SimSiam(backbone, DIM, PRED_DIM, projector_layers=2)
    convert.to_torch(source, tmp_path / "pretrained.pth.tar")
    ref = official.resnet(arch, WIDTH, num_classes=10)
    msg = official.lincls_load_pretrained(ref, tmp_path / "pretrained.pth.tar")
    assert set(msg.missing_keys) == {"fc.weight", "fc.bias"} and not msg.unexpected_keys
    x = _images(6)
    with torch.no_grad():
        features = ref.eval().features(_nchw(x))
    diff = _max_diff(backbone(x, training=False), features)
    print(f"\n{arch} Keras -> main_lincls --pretrained max abs diff (eval): {diff}")
    assert diff < 1e-4
    _assert_same_variables(source, convert.from_torch(str(tmp_path / "pretrained.pth.tar")))


def test_converted_keras_file_loads(tmp_path):
    ref = _official_simsiam("resnet18_cifar", 2).eval()
    model = convert.from_torch(official.save_main_simsiam(ref, tmp_path / "c.pth.tar", "resnet18"))
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    x1, x2 = _images(7), _images(8)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded((x1, x2))["p1"]),
        keras.ops.convert_to_numpy(model((x1, x2))["p1"]),
    )
    backbone = sk.load_backbone(str(tmp_path / "model.keras"))
    assert backbone.name == "resnet18_cifar"


def _error(source):
    with pytest.raises(ValueError) as info:
        convert.from_torch(source)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_other_architectures_are_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    resnet34 = official.SimSiam("resnet34", WIDTH, DIM, PRED_DIM)
    path = official.save_main_simsiam(resnet34, tmp_path / "r34.pth.tar", "resnet34")
    assert "resnet34" in _error(str(path))
    vit = {
        "module.encoder.patch_embed.proj.weight": torch.zeros(8, 3, 16, 16),
        "module.encoder.blocks.0.attn.qkv.weight": torch.zeros(24, 8),
    }
    vit = {"arch": "vit_small", "state_dict": vit}
    assert "Not a torchvision ResNet" in _error(vit)

    good = official.SimSiam("resnet18", WIDTH, DIM, PRED_DIM)
    checkpoint = {"arch": "resnet50", "state_dict": official._ddp(good.state_dict())}
    assert "arch='resnet50'" in _error(checkpoint)
    checkpoint["arch"] = "resnet18"
    del checkpoint["state_dict"]["module.predictor.3.bias"]
    checkpoint["state_dict"]["module.encoder.extra.weight"] = torch.zeros(3)
    message = _error(checkpoint)
    assert "missing keys ['predictor.3.bias']" in message
    assert "unexpected keys ['encoder.extra.weight']" in message
    checkpoint = {"state_dict": official._ddp(good.state_dict())}
    checkpoint["state_dict"]["module.encoder.layer1.0.conv1.weight"] = torch.zeros(8, 8, 1, 1)
    assert "'encoder.layer1.0.conv1.weight' has shape [8, 8, 1, 1]" in _error(checkpoint)


def test_truncated_and_unsafe_files_are_refused_in_one_line(tmp_path):
    ref = _official_simsiam("resnet18_cifar", 2)
    path = official.save_main_simsiam(ref, tmp_path / "c.pth.tar", "resnet18")
    data = path.read_bytes()
    (tmp_path / "cut.pth.tar").write_bytes(data[: len(data) // 2])
    assert "Could not read a PyTorch checkpoint" in _error(str(tmp_path / "cut.pth.tar"))
    # Objects other than tensors and plain containers (say, argparse's `args`) are refused.
    torch.save(
        {"state_dict": ref.state_dict(), "args": argparse.Namespace(lr=0.05)}, tmp_path / "u.pth"
    )
    assert "weights_only=True" in _error(str(tmp_path / "u.pth"))
    assert "No such checkpoint file" in _error(str(tmp_path / "missing.pth.tar"))


def test_convert_checkpoint_script_both_ways(tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the script runs once, on the default (TensorFlow) backend")
    ref = _official_simsiam("resnet18_cifar", 2)
    path = official.save_main_simsiam(ref, tmp_path / "c.pth.tar", "resnet18")
    out = tmp_path / "model.keras"
    line = last_json(
        run_command(
            "convert_checkpoint", "--from_torch", path, "--output", out, "--image_size", SIZE
        )
    )
    assert line["what"] == "convert" and line["direction"] == "from_torch"
    assert (line["kind"], line["arch"], line["width"]) == ("simsiam", "resnet18_cifar", WIDTH)
    assert sk.load_backbone(str(out)).input_shape == (None, SIZE, SIZE, 3)

    back = tmp_path / "back.pth.tar"
    line = last_json(run_command("convert_checkpoint", "--to_torch", out, "--output", back))
    assert (line["direction"], line["output"]) == ("to_torch", str(back))
    state = torch.load(back, map_location="cpu", weights_only=True)["state_dict"]
    assert list(state) == [f"module.{k}" for k in ref.state_dict()]

    again = run_command("convert_checkpoint", "--to_torch", out, "--output", back)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    (tmp_path / "cut.pth.tar").write_bytes(path.read_bytes()[:1000])
    bad = run_command(
        "convert_checkpoint",
        "--from_torch",
        tmp_path / "cut.pth.tar",
        "--output",
        tmp_path / "x.keras",
    )
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "Could not read a PyTorch checkpoint" in bad.stderr
    assert not (tmp_path / "x.keras").exists()
