"""Checkpoints of the authors' PyTorch code (facebookresearch/simsiam) to this package and back.

Read (`from_torch`), with the architecture inferred from the tensor shapes and checked:

* `main_simsiam.py`'s `{'epoch', 'arch', 'state_dict', 'optimizer'}`: the state dict of
  DistributedDataParallel(SimSiam): `module.encoder.*` is a torchvision ResNet whose `fc` is the
  projector (`fc.0` Linear, `fc.1` BN, ReLU, `fc.3`, `fc.4`, ReLU, `fc.6` Linear, `fc.7` BN
  without affine; simsiam/builder.py), `module.predictor.{0,1,3}` the predictor -> `SimSiam`.
* `main_lincls.py`'s `{'epoch', 'arch', 'state_dict', 'best_acc1', 'optimizer'}`: `module.conv1.*`
  ... plus the classifier `module.fc.*` -> `LinearClassifier`.
* `torch.save(resnet.state_dict())` of a torchvision ResNet: `conv1.*` ... -> the backbone
  alone; its `fc` (e.g. torchvision's ImageNet classifier) is reported and not converted.

Written (`to_torch`): `{'epoch', 'arch', 'state_dict'}` in `main_simsiam.py`'s layout, which
`main_lincls.py --pretrained` loads; a backbone alone gives `module.encoder.*` without `fc`, a
`LinearClassifier` gives `main_lincls.py`'s `module.*` keys.

Layouts: conv [O, I, kh, kw] <-> kernel [kh, kw, I, O]; Linear [out, in] <-> [in, out]; BN
weight / bias / running_mean / running_var <-> gamma / beta / moving_mean / moving_variance;
`num_batches_tracked` is dropped on reading and written as 0 (it only matters for PyTorch's
`momentum=None`). The official `fc.6` keeps a bias (frozen at its random init), followed by a BN
without affine; this package's last projector Dense has none, so the bias is folded into that
BN's moving mean: in inference BN(x + b) = (x + b - m) / sqrt(v + eps), so m' = m - b is exact,
and in training the batch mean absorbs b. `to_torch` writes `fc.6.bias = 0` and m.

Files are read with `torch.load(weights_only=True)`: tensors and plain containers only, never
arbitrary pickled objects. This module imports Keras and PyTorch only when used (so that the
command, `commands.convert`, can quiet TensorFlow's logs first), and never TensorFlow.
"""

import dataclasses
import os
import re

import numpy as np

TORCH_HINT = 'PyTorch is needed to read and write .pth files: pip install -e ".[torch]"'
SUPPORTED = ("resnet18", "resnet50", "resnet18_cifar")
# torchvision's ResNets by (blocks per stage, bottleneck): for the error messages.
_RESNETS = {
    (2, 2, 2, 2, False): "resnet18",
    (3, 4, 6, 3, False): "resnet34",
    (3, 4, 6, 3, True): "resnet50",
    (3, 4, 23, 3, True): "resnet101",
    (3, 8, 36, 3, True): "resnet152",
}
# A Keras variable name -> the PyTorch parameter or buffer name of the same tensor.
KERAS_TO_TORCH = {
    "kernel": "weight",
    "gamma": "weight",
    "beta": "bias",
    "bias": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What a checkpoint holds, as inferred from its tensor shapes.

    Attributes:
        kind: "simsiam", "linear_classifier" or "backbone".
        arch: "resnet18", "resnet50" or "resnet18_cifar" (3x3 stride-1 stem, no max-pool).
        width: the channel multiplier (`build_resnet`'s; stage-4 width / 512 when exact).
        dim: projector output width (kind "simsiam").
        pred_dim: predictor bottleneck width (kind "simsiam").
        projector_layers: Linear layers in the projector (kind "simsiam").
        num_classes: classifier outputs (kind "linear_classifier").
        ignored: keys read and deliberately not converted (a plain state dict's `fc`).
    """

    kind: str
    arch: str
    width: float
    dim: int | None = None
    pred_dim: int | None = None
    projector_layers: int | None = None
    num_classes: int | None = None
    ignored: tuple = ()


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError(TORCH_HINT) from None
    return torch


def _first_line(error):
    """`Type: first sentence` of an exception (torch's and Keras's run on for paragraphs)."""
    text = str(error).strip().splitlines()
    text = text[0].split(". ")[0][:300] if text else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def read_checkpoint(path):
    """Reads a `.pth` / `.pth.tar` file on the CPU, unpickling tensors and plain containers only.

    Args:
        path: the file `torch.save` wrote.

    Returns:
        What it holds (a dict).

    Raises:
        ImportError: without PyTorch.
        ValueError: a missing, truncated or corrupt file, or one holding other Python objects.
    """
    if not os.path.isfile(path):
        raise ValueError(f"No such checkpoint file: {path!r}")
    torch = _torch()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        if "weights only load failed" in str(e).lower():
            raise ValueError(
                f"{path!r} holds Python objects besides tensors and plain containers, which "
                "are not unpickled here (torch.load weights_only=True); save its state_dict "
                "alone with torch.save"
            ) from None
        raise ValueError(
            f"Could not read a PyTorch checkpoint from {path!r} (truncated or not written by "
            f"torch.save?): {_first_line(e)}"
        ) from None


def _numpy(value):
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        value = value.float() if value.is_floating_point() else value
        return value.numpy()
    return np.asarray(value)


def _state_dict(checkpoint):
    """(state dict of NumPy arrays, prefixes stripped; the checkpoint's arch; wrapped)."""
    wrapped = isinstance(checkpoint, dict) and "state_dict" in checkpoint
    state = checkpoint["state_dict"] if wrapped else checkpoint
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and hasattr(v, "shape") for k, v in state.items())
    ):
        keys = sorted(map(str, checkpoint))[:5] if isinstance(checkpoint, dict) else None
        raise ValueError(
            "Expected main_simsiam.py's or main_lincls.py's {'state_dict': ...} or a state dict "
            f"of tensors. Received a {type(checkpoint).__name__} with keys {keys}"
        )
    arrays = {k: _numpy(v) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return _strip(arrays), checkpoint.get("arch") if wrapped else None, wrapped


def _strip(state):
    """Without DataParallel's 'module.', and 'encoder.' of an encoder alone (no fc, predictor)."""
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if all(k.startswith("encoder.") and not k.startswith("encoder.fc.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items()}
    return state


def _infer_backbone(state, prefix):
    conv1 = state.get(prefix + "conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        raise ValueError(
            f"Not a torchvision ResNet: no 4-D '{prefix}conv1.weight' (keys begin "
            f"{sorted(state)[:3]}). Supported: {', '.join(SUPPORTED)}"
        )
    blocks = []
    for stage in range(1, 5):
        pattern = re.compile(rf"{re.escape(prefix)}layer{stage}\.(\d+)\.")
        found = {int(m[1]) for m in map(pattern.match, state) if m}
        if not found or found != set(range(len(found))):
            raise ValueError(
                f"Not a torchvision ResNet: no blocks '{prefix}layer{stage}.0, 1, ...'"
            )
        blocks.append(len(found))
    bottleneck = prefix + "layer1.0.conv3.weight" in state
    name = _RESNETS.get((*blocks, bottleneck))
    kernel = conv1.shape[-1]
    if name == "resnet18" and kernel == 3:
        name = "resnet18_cifar"
    elif name not in ("resnet18", "resnet50") or kernel != 7:
        kind = "bottleneck" if bottleneck else "basic"
        what = name or f"ResNet with {tuple(blocks)} {kind} blocks per stage"
        raise ValueError(
            f"The checkpoint holds a {what} with a {kernel}x{kernel} stem. Supported: resnet18 "
            "and resnet50 (7x7 stem), resnet18_cifar (resnet18 with a 3x3 stem)"
        )
    return name, _width(state, prefix)


def _width(state, prefix):
    """The multiplier that `build_resnet` turns into this stem and these stage widths."""
    from simsiam_keras.backbones import STAGE_WIDTHS, channels

    bases = (64, *STAGE_WIDTHS)
    keys = ("conv1", *(f"layer{s}.0.conv1" for s in range(1, 5)))
    found = [state[f"{prefix}{k}.weight"].shape[0] for k in keys]
    # Each count c > 8 holds for widths in [(c - 0.5) / base, (c + 0.5) / base]; try the exact
    # ratios (widest stage first) and then the middle of the intersection.
    low = max([(c - 0.5) / b for b, c in zip(bases, found) if c > 8], default=0.0)
    high = min((c + 0.5) / b for b, c in zip(bases, found))
    for width in [c / b for b, c in zip(bases[::-1], found[::-1])] + [(low + high) / 2]:
        if width > 0 and [channels(b, width) for b in bases] == found:
            return width
    raise ValueError(
        f"The stem and stage widths {found} are not torchvision's {list(bases)} times one "
        "width multiplier"
    )


def infer_architecture(state, arch=None, classifier=False):
    """The architecture a state dict (NumPy arrays, no 'module.' prefix) holds.

    Args:
        state: the state dict.
        arch: the checkpoint's `arch` field, checked against the tensors when given
            ("resnet18" is accepted for resnet18_cifar, as a CIFAR port of the code names it).
        classifier: convert a ResNet's `fc.weight`/`fc.bias` into a `LinearClassifier`
            (main_lincls.py checkpoints) instead of ignoring them (plain state dicts).

    Returns:
        An `Architecture`.

    Raises:
        ValueError: an unsupported or inconsistent architecture.
    """
    simsiam = any(k.startswith("encoder.") for k in state)
    prefix = "encoder." if simsiam else ""
    name, width = _infer_backbone(state, prefix)
    if arch is not None and str(arch) not in (name, name.replace("_cifar", "")):
        raise ValueError(f"The checkpoint says arch={arch!r}, but its tensors are a {name}")
    if simsiam:
        linears = sorted(
            int(m[1])
            for m in map(re.compile(r"encoder\.fc\.(\d+)\.weight").fullmatch, state)
            if m and state[m[0]].ndim == 2
        )
        if not linears or linears != list(range(0, 3 * len(linears), 3)):
            raise ValueError(
                "'encoder.fc' is not the SimSiam projector (Linear layers at fc.0, fc.3, ...). "
                f"Found Linear layers at fc.{linears}"
            )
        predictor = state.get("predictor.0.weight")
        if predictor is None or predictor.ndim != 2:
            raise ValueError("No SimSiam predictor: 'predictor.0.weight' is missing")
        dim = state[f"encoder.fc.{linears[-1]}.weight"].shape[0]
        return Architecture("simsiam", name, width, dim, predictor.shape[0], len(linears))
    fc = ("fc.weight", "fc.bias")
    if classifier and fc[0] in state and state[fc[0]].ndim == 2:
        return Architecture("linear_classifier", name, width, num_classes=state[fc[0]].shape[0])
    return Architecture("backbone", name, width, ignored=tuple(k for k in fc if k in state))


def load_official(source):
    """A checkpoint's state dict (NumPy arrays) and its architecture.

    Args:
        source: a file path, or what `torch.load` returned (a checkpoint or a state dict).

    Returns:
        `(state, architecture)`: `state` without `num_batches_tracked` and 'module.' prefixes.

    Raises:
        ImportError: a file path without PyTorch installed.
        ValueError: an unreadable file or an unsupported architecture.
    """
    if isinstance(source, (str, os.PathLike)):
        source = read_checkpoint(os.fspath(source))
    state, arch, wrapped = _state_dict(source)
    return state, infer_architecture(state, arch, classifier=wrapped)


# Keras layer name -> torch module name: the one table both directions use.
def _torch_module(name):
    if name in ("stem_conv", "stem_bn", "fc"):
        return {"stem_conv": "conv1", "stem_bn": "bn1", "fc": "fc"}[name]
    m = re.fullmatch(r"stage(\d)_block(\d+)_(down_)?(conv|bn)(\d?)", name)
    if m:
        stage, block, down, op, i = m.groups()
        module = f"layer{stage}.{int(block) - 1}"
        return f"{module}.downsample.{int(op == 'bn')}" if down else f"{module}.{op}{i}"
    m = re.fullmatch(r"(projector|predictor)_(dense|bn)_(\d+)", name)
    if m:  # nn.Sequential indices: Linear, BN, ReLU per layer
        head = "fc" if m[1] == "projector" else "predictor"
        return f"{head}.{3 * (int(m[3]) - 1) + int(m[2] == 'bn')}"
    raise ValueError(f"Layer {name!r} has no counterpart in the official code")


def _block(name):
    m = re.match(r"stage\d_block\d+", name)
    return m[0] if m else name


def _weighted_layers(model):
    """The layers with weights, in torchvision's order (a block's downsample after its convs)."""
    import keras

    convertible = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.BatchNormalization)
    layers = [layer for layer in model.layers if layer.weights]
    for layer in layers:
        if not isinstance(layer, convertible):
            raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) cannot be converted")
    rank = {}
    for layer in layers:
        rank.setdefault(_block(layer.name), len(rank))
    return sorted(layers, key=lambda layer: (rank[_block(layer.name)], "_down_" in layer.name))


def _sections(model, backbone_prefix):
    """`(kind, [(layer, torch key prefix)])` of a SimSiam, LinearClassifier or backbone."""
    from simsiam_keras import linear
    from simsiam_keras import model as model_lib

    if isinstance(model, model_lib.SimSiam):
        parts = [(model.backbone, "encoder."), (model.projector, "encoder."), (model.predictor, "")]
        kind = "simsiam"
    elif isinstance(model, linear.LinearClassifier):
        kind, parts = "linear_classifier", [(model.backbone, "")]
    elif any(layer.name == "stem_conv" for layer in getattr(model, "layers", ())):
        kind, parts = "backbone", [(model, backbone_prefix)]
    else:
        raise ValueError(
            "Expected a SimSiam, a LinearClassifier or a build_resnet backbone. Received: "
            f"{type(model).__name__} {getattr(model, 'name', '')!r}"
        )
    layers = [(layer, prefix) for part, prefix in parts for layer in _weighted_layers(part)]
    if kind == "linear_classifier":
        layers.append((model.fc, ""))
    return kind, layers


def _to_keras_layout(array):
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T if array.ndim == 2 else array


def to_torch_layout(array):
    """A Keras weight array in PyTorch's layout: HWIO -> OIHW kernels, (in, out) -> (out, in)."""
    return array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T if array.ndim == 2 else array


def torch_keys(model):
    """`{variable.path: official key}` for every weight of `model` (as `torch_state_dict`).

    Args:
        model: a `SimSiam`, a `LinearClassifier` or a `build_resnet` backbone.

    Returns:
        A dict from each Keras variable's path to its key in the official state dict.
    """
    _, layers = _sections(model, "encoder.")
    return {
        variable.path: f"{prefix}{_torch_module(layer.name)}.{KERAS_TO_TORCH[variable.name]}"
        for layer, prefix in layers
        for variable in layer.weights
    }


def _fold_keys(architecture):
    """The last projector Linear's bias and the running mean of the BN after it."""
    last = 3 * (architecture.projector_layers - 1)
    return f"encoder.fc.{last}.bias", f"encoder.fc.{last + 1}.running_mean"


def build_keras(state, architecture, image_size=None):
    """The Keras model of `architecture` holding the weights and BN statistics of `state`.

    Args:
        state: a state dict from `load_official`.
        architecture: its `Architecture`.
        image_size: fix the model's input size (None: any size).

    Returns:
        A `SimSiam`, `LinearClassifier` or backbone (`build_resnet`), BN layers unsynchronised.

    Raises:
        ValueError: missing or unexpected keys, or a tensor of an unexpected shape.
    """
    from simsiam_keras import backbones, linear
    from simsiam_keras import model as model_lib

    a = architecture
    backbone = backbones.build_resnet(a.arch, a.width, image_size, synchronized_bn=False)
    if a.kind == "simsiam":
        model = model_lib.SimSiam(
            backbone, a.dim, a.pred_dim, a.projector_layers, synchronized_bn=False
        )
    elif a.kind == "linear_classifier":
        model = linear.LinearClassifier(backbone, a.num_classes)
        model(np.zeros((1, image_size or 32, image_size or 32, 3), "float32"))  # builds fc
    else:
        model = backbone
    _, layers = _sections(model, "")
    values = {}
    for layer, prefix in layers:
        module = prefix + _torch_module(layer.name)
        for variable in layer.weights:
            values[f"{module}.{KERAS_TO_TORCH[variable.name]}"] = variable
    bias, mean = _fold_keys(a) if a.kind == "simsiam" else (None, None)
    missing = sorted(set(values) - set(state))
    unexpected = sorted(set(state) - set(values) - {bias} - set(a.ignored))
    if missing or unexpected:
        raise ValueError(
            f"The checkpoint does not match a {a.arch} {a.kind} of width {a.width:g}: "
            f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    arrays = {}
    for key, variable in values.items():
        array = np.ascontiguousarray(_to_keras_layout(state[key]), dtype=np.float32)
        if array.shape != tuple(variable.shape):
            expected = to_torch_layout(np.broadcast_to(np.float32(0), variable.shape)).shape
            raise ValueError(
                f"'{key}' has shape {list(state[key].shape)}; a {a.arch} of width {a.width:g} "
                f"has {list(expected)} there"
            )
        arrays[key] = array
    if bias in state:  # the fold: BN(x + b) with mean m == BN(x) with mean m - b
        if state[bias].shape != arrays[mean].shape:
            raise ValueError(f"'{bias}' has shape {list(state[bias].shape)}, not [{a.dim}]")
        arrays[mean] = arrays[mean] - state[bias].astype(np.float32)
    for key, variable in values.items():
        variable.assign(arrays[key])
    return model


def from_torch(source, image_size=None):
    """A Keras model from a checkpoint of the official PyTorch code or a torchvision ResNet.

    Args:
        source: a `.pth` / `.pth.tar` path, or what `torch.load` returned.
        image_size: fix the Keras model's input size (None: any size).

    Returns:
        A `SimSiam` (main_simsiam.py), a `LinearClassifier` (main_lincls.py) or a backbone
        (a plain ResNet state dict, its `fc` ignored), with every weight and BN statistic.

    Raises:
        ImportError: a path without PyTorch installed.
        ValueError: an unreadable file, or a checkpoint of another architecture.

    Example:
        >>> model = from_torch("checkpoint_0099.pth.tar")  # main_simsiam.py, ResNet-50
        >>> model.save("simsiam_in1k.keras")
    """
    state, architecture = load_official(source)
    return build_keras(state, architecture, image_size)


def _load_keras(path):
    import keras

    from simsiam_keras import linear  # noqa: F401 (registers SimSiam, LinearClassifier)

    file = os.path.join(path, "model.keras") if os.path.isdir(path) else path
    if not os.path.isfile(file) or not file.endswith(".keras"):
        raise ValueError(f"Expected a .keras file or a workdir holding model.keras: {path!r}")
    try:
        return keras.models.load_model(file, compile=False)
    except Exception as e:
        raise ValueError(f"Could not load a Keras model from {file!r}: {_first_line(e)}") from None


def torch_state_dict(model):
    """The official state dict of a Keras model, as NumPy arrays (no 'module.' prefix).

    Args:
        model: a `SimSiam` (-> `encoder.*` with the projector as `encoder.fc.*`, and
            `predictor.*`), a `LinearClassifier` (-> torchvision's keys with `fc.*`) or a
            `build_resnet` backbone (-> `encoder.*` without `fc`).

    Returns:
        `(state, architecture)`: an ordered dict in torchvision's key order, and its
        `Architecture` (inferred back from the arrays, which checks them).

    Raises:
        ValueError: a model this format cannot hold.
    """
    import keras

    kind, layers = _sections(model, "encoder.")
    state = {}
    for layer, prefix in layers:
        module = prefix + _torch_module(layer.name)
        for variable in layer.weights:
            array = np.asarray(keras.ops.convert_to_numpy(variable), np.float32)
            state[f"{module}.{KERAS_TO_TORCH[variable.name]}"] = to_torch_layout(array)
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.epsilon != 1e-5:
                raise ValueError(f"{layer.name!r} has epsilon {layer.epsilon}; PyTorch's is 1e-5")
            state[f"{module}.num_batches_tracked"] = np.array(0, np.int64)
        elif kind == "simsiam" and layer.name == f"projector_dense_{model.projector_layers}":
            state[f"{module}.bias"] = np.zeros(layer.units, np.float32)  # the frozen fc bias
    arrays = _strip({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")})
    return state, infer_architecture(arrays, classifier=kind == "linear_classifier")


def _trained_epochs(path):
    """The epochs trained by the pretraining run that holds `path`, from its last checkpoint.

    `path`: the run's workdir or its model.keras. 0 when `path` is not in such a run.
    """
    from simsiam_keras import checkpoint

    workdir = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    found = checkpoint.latest(os.path.join(workdir, "checkpoints"))
    return checkpoint.read_state(found)["epoch"] if found else 0


def to_torch(source, output, epoch=None):
    """Writes a Keras model as a checkpoint of the official code (`main_simsiam.py`'s layout).

    The file holds `{'epoch', 'arch', 'state_dict'}` with DistributedDataParallel's `module.`
    prefix: `main_lincls.py --pretrained` loads the backbone of a SimSiam or of a backbone
    alone; `fc.6.bias` is 0 and `fc.7.running_mean` the Keras moving mean (the fold, exact).

    Args:
        source: a `SimSiam`, `LinearClassifier` or `build_resnet` backbone, a `.keras` file
            or a pretraining workdir holding `model.keras`.
        output: the `.pth.tar` path (replaced if it exists; written to a temporary file
            first, then renamed).
        epoch: the checkpoint's `epoch` field, the epochs trained (default: those of the
            pretraining run `source` belongs to, from its last checkpoint; else 0).

    Returns:
        The written model's `Architecture`.

    Raises:
        ImportError: without PyTorch.
        ValueError: an unreadable source or a model this format cannot hold.
    """
    torch = _torch()
    is_path = isinstance(source, (str, os.PathLike))
    if epoch is None:
        epoch = _trained_epochs(os.fspath(source)) if is_path else 0
    model = _load_keras(os.fspath(source)) if is_path else source
    state, architecture = torch_state_dict(model)
    checkpoint = {
        "epoch": int(epoch),
        "arch": architecture.arch,
        "state_dict": {f"module.{k}": torch.from_numpy(np.array(v)) for k, v in state.items()},
    }
    write_atomically(os.fspath(output), lambda path: torch.save(checkpoint, path))
    return architecture


def write_atomically(path, write, suffix=""):
    """`write(tmp)` beside `path`, then a rename: a failed write leaves no partial file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}{suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
