"""Every setting of the three tools in one place: its default, its help text and its checks.

`PretrainConfig`, `LinearConfig` and `KnnConfig` hold the paper's ImageNet recipe as their
defaults (docs/recipe.md), the only defaults there are: `--help` shows them whatever else is on
the command line. The scripts' absl flags are generated from their fields (`define_flags`), one
flag of the same name per field (a boolean `stop_gradient` gives `--stop_gradient` /
`--nostop_gradient`), so a flagfile overrides only what differs from the paper:
`configs/in1k.cfg` is nearly empty, `configs/cifar10.cfg` holds the App. D changes and
`configs/quickstart.cfg` the offline quickstart on the embedded digits. A flagfile rather than
defaults that change without one: what a run used is always the paper's recipe plus the lines
of the files and flags it was given.

`validate(config)` raises `ConfigError`, whose message names the setting (`batch_size must be
a positive integer`); the scripts print it with the flag's dashes (`--batch_size ...`).

This module imports neither TensorFlow nor Keras: the scripts define their flags before
TensorFlow is imported.
"""

import dataclasses
import os
import sys
import types
import typing

from simsiam_keras import recipe
from simsiam_keras.errors import ConfigError
from simsiam_keras.names import AUGMENT_IMPLS, BACKBONES, PRECISIONS, STRATEGIES


def setting(default, help, check=None, choices=None, resumable=False):  # noqa: A002 (absl's word)
    """A config field with its help text and checks.

    Args:
        default: the paper's value.
        help: the flag's help text.
        check: "positive", "non_negative", "dir" (an existing directory) or "exists".
        choices: the allowed values (an enum flag).
        resumable: the value may change when a run is resumed (where things are and what is
            reported, not what is trained); the others must match the workdir's config.json.
    """
    meta = {"help": help, "check": check, "choices": choices, "resumable": resumable}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class PretrainConfig:
    """A pretraining run. Defaults: the paper's ImageNet recipe (Sec. 4, App. A)."""

    workdir: str | None = setting(
        None,
        "Checkpoints, logs, summary and export (default: runs/<flagfile name>, else runs/default).",
        resumable=True,
    )
    dataset: str = setting("imagenet2012", "'digits' (embedded, offline) or a TFDS name.")
    data_dir: str | None = setting(None, "TFDS data directory.", resumable=True)
    train_dir: str | None = setting(
        None, "Image folder to pretrain on (selects the folder source).", check="dir"
    )
    val_dir: str | None = setting(
        None,
        "Labelled image folder: the kNN monitor's queries (default: --knn_holdout).",
        check="dir",
        resumable=True,
    )
    knn_holdout: int | None = setting(
        None,
        "Without --val_dir: images of a labelled --train_dir held out of training as the "
        "kNN monitor's queries (default: 10% of each class, at most 10,000 in all; 0: none, "
        "no monitor). Listed in WORKDIR/knn_holdout.txt.",
        "non_negative",
    )
    backbone: str = setting("resnet50", "The encoder's backbone.", choices=BACKBONES)
    width: float = setting(1.0, "Channel width multiplier (1: the paper's networks).", "positive")
    image_size: int = setting(224, "Input height and width.", "positive")
    batch_size: int = setting(512, "Global batch size (all replicas).", "positive")
    epochs: int = setting(
        100, "Epochs (a larger value continues a finished run).", "positive", resumable=True
    )
    base_lr: float = setting(
        0.05, "lr per 256 images (paper: 0.05 ImageNet, 0.03 CIFAR).", "positive"
    )
    weight_decay: float = setting(
        1e-4, "L2 weight decay (paper: 1e-4 ImageNet, 5e-4 CIFAR).", "non_negative"
    )
    fix_pred_lr: bool = setting(True, "Keep the predictor's lr constant (paper Table 1).")
    warmup_epochs: int = setting(
        0, "Linear warm-up epochs (paper: 10 for batch >= 1024).", "non_negative"
    )
    dim: int = setting(2048, "Projector output width.", "positive")
    pred_dim: int = setting(512, "Predictor bottleneck width.", "positive")
    projector_layers: int | None = setting(
        None,
        "Projector layers: 2 (CIFAR, App. D) or 3 (default: 2 for resnet18_cifar).",
        "positive",
    )
    blur: bool | None = setting(None, "Gaussian blur in the views (default: on above 32 px).")
    strategy: str = setting(
        "auto",
        "auto: all local accelerators; one_device; mirrored: tf MirroredStrategy (SyncBN), JAX "
        "DataParallel; multi_worker: tf MultiWorkerMirroredStrategy from TF_CONFIG (run the "
        "same command on every worker, --workdir on shared storage; worker 0 writes). "
        "PyTorch: one device.",
        choices=STRATEGIES,
        resumable=True,
    )
    augment_impl: str = setting(
        "simsiam_keras",
        "The views: simsiam_keras (torchvision's semantics, seeded per image) or kerascv "
        "(keras-cv layers with the paper's parameters; docs/pipeline.md, 'KerasCV views').",
        choices=AUGMENT_IMPLS,
    )
    augment_on: str = setting(
        "host",
        "Where the views' steps after the crop run: host (tf.data, beside the step) or device "
        "(ViewAugment inside the train step, on the accelerator; docs/speed.md).",
        choices=("host", "device"),
    )
    mixed_precision: str = setting("none", "Compute precision.", choices=PRECISIONS)
    seed: int = setting(0, "Seed.")
    stop_gradient: bool = setting(
        True, "The stop-gradient on z (--nostop_gradient: the Fig. 2 collapse ablation)."
    )
    knn_every: int = setting(
        0,
        "kNN monitor every N epochs (0: off; it needs labelled train and validation data).",
        "non_negative",
        resumable=True,
    )
    knn_k: int = setting(200, "kNN monitor: neighbours (paper: 200).", "positive", resumable=True)
    checkpoint_every: int = setting(1000, "Steps between checkpoints.", "positive", resumable=True)
    steps_per_epoch: int | None = setting(
        None, "Cap on steps per epoch (smoke runs; default: the whole split).", "positive"
    )
    deterministic: bool = setting(False, "Fixed data order, views and kernels for the seed.")
    export: bool = setting(True, "Export the backbone as a SavedModel at the end.", resumable=True)
    compare_random_init: bool = setting(
        False,
        "Also report a random-init encoder's kNN (BN statistics recomputed).",
        resumable=True,
    )
    progress_every_s: float = setting(
        30.0,
        "Seconds between progress lines when not on a terminal.",
        "non_negative",
        resumable=True,
    )

    def check(self):
        """The checks that involve more than one setting or the file system."""
        if self.workdir is None:
            raise ConfigError("{} is required.", "workdir")
        if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise ConfigError(f"{{}} {self.workdir!r} exists and is a file.", "workdir")
        if self.val_dir and not self.train_dir:
            raise ConfigError("{} needs {} (the kNN memory).", "val_dir", "train_dir")
        if self.augment_on == "device" and self.augment_impl == "kerascv":
            raise ConfigError(
                "{}=device runs this package's views; {}=kerascv runs on the host.",
                "augment_on",
                "augment_impl",
            )
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"{{}} ({self.warmup_epochs}) must be < {{}} ({self.epochs}).",
                "warmup_epochs",
                "epochs",
            )


@dataclasses.dataclass
class EvaluationData:
    """What both evaluations read: the pretrained model and the labelled data."""

    pretrained: str | None = setting(
        None,
        "A .keras SimSiam/backbone file, an exported SavedModel or a pretraining workdir.",
        "exists",
        resumable=True,  # a resumed evaluation checks the weights, not the path
    )
    dataset: str = setting("imagenet2012", "'digits' (embedded) or a TFDS name.")
    data_dir: str | None = setting(None, "TFDS data directory.", resumable=True)
    train_dir: str | None = setting(
        None, "Labelled image folder <class>/<image>: the training split (the kNN memory).", "dir"
    )
    val_dir: str | None = setting(
        None, "Labelled image folder: the validation split (the kNN queries).", "dir"
    )
    image_size: int | None = setting(
        None, "Input height and width (default: the size the model was built for).", "positive"
    )

    def check(self):
        """The checks that involve more than one setting."""
        if not self.pretrained:
            raise ConfigError("{} is required.", "pretrained")
        if bool(self.train_dir) != bool(self.val_dir):
            raise ConfigError(
                "{} and {} go together (both labelled folders).", "train_dir", "val_dir"
            )


@dataclasses.dataclass
class LinearConfig(EvaluationData):
    """A linear evaluation. Defaults: the paper's ImageNet protocol (App. A)."""

    workdir: str | None = setting(
        None,
        "Where results go (default: beside --pretrained); --protocol=official keeps its "
        "checkpoints in WORKDIR/linear_eval/ and resumes from them.",
        resumable=True,
    )
    batch_size: int = setting(4096, "Global batch size (all replicas).", "positive")
    epochs: int = setting(90, "Epochs of the official protocol.", "positive")
    protocol: str = setting(
        "official",
        "official: LARS/SGD on augmented views (the paper); features: L-BFGS on frozen "
        "features, exact and fast for small datasets; auto: features up to 200,000 "
        "training images.",
        choices=("auto", "official", "features"),
    )
    optimizer: str = setting("lars", "LARS or plain SGD.", choices=("lars", "sgd"))
    base_lr: float | None = setting(
        None, "lr per 256 images (default: LARS 0.1, SGD 30).", "positive"
    )
    weight_decay: float = setting(0.0, "L2 weight decay (paper: 0).", "non_negative")
    steps_per_epoch: int | None = setting(None, "Cap on steps per epoch (smoke runs).", "positive")
    seed: int = setting(0, "Seed.")
    strategy: str = setting(
        "auto",
        "As pretraining's: auto, one_device, mirrored (tf MirroredStrategy, JAX DataParallel) "
        "or multi_worker (tf, from TF_CONFIG; the chief writes).",
        choices=STRATEGIES,
        resumable=True,
    )
    mixed_precision: str = setting(
        "none",
        "Compute precision of the frozen backbone (the linear layer stays float32).",
        choices=PRECISIONS,
    )
    checkpoint_every: int = setting(
        1000, "--protocol=official: steps between checkpoints.", "positive", resumable=True
    )
    deterministic: bool = setting(False, "Fixed data order and kernels for the seed.")
    l2: float = setting(
        1.0, "--protocol=features: inverse L2 strength on standardised features.", "positive"
    )
    progress_every_s: float = setting(
        30.0,
        "Seconds between progress lines when not on a terminal.",
        "non_negative",
        resumable=True,
    )

    def check(self):
        """The evaluation's checks, and a workdir that is not a file."""
        super().check()
        if self.workdir and os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise ConfigError(f"{{}} {self.workdir!r} is a file.", "workdir")


@dataclasses.dataclass
class KnnConfig(EvaluationData):
    """A kNN evaluation (k=200, T=0.2, cosine, weighted vote: the InstDisc monitor)."""

    batch_size: int = setting(256, "Feature batch size.", "positive")
    knn_k: int = setting(200, "Neighbours (the same flag as pretraining's monitor).", "positive")
    temperature: float = setting(0.2, "Vote temperature.", "positive")
    feature_dtype: str = setting(
        "float16",
        "How the features are stored: float16 (half of float32; similarities are computed in "
        "float32) or float32 (docs/knn_memory.md).",
        choices=("float16", "float32"),
    )
    memory_dir: str | None = setting(
        None,
        "Keep the memory (train features) on disk, one .npy file per chunk, in a "
        "temporary folder inside this existing folder, removed at the end (default: in RAM).",
    )
    chunk_rows: int = setting(
        8192, "Memory rows per chunk: per file, and per similarity block.", "positive"
    )

    def check(self):
        """The evaluation's checks, and a memory folder that exists."""
        super().check()
        if self.memory_dir and not os.path.isdir(self.memory_dir):
            raise ConfigError(f"{{}}: folder not found: {self.memory_dir!r}", "memory_dir")


def validate(config):
    """Raises `ConfigError` naming the first bad setting of `config`; returns `config`."""
    for field in dataclasses.fields(config):
        value, meta = getattr(config, field.name), field.metadata
        if value is None:
            continue
        choices, check = meta.get("choices"), meta.get("check")
        if choices and value not in choices:
            raise ConfigError(f"{{}} must be one of {list(choices)}; got {value!r}.", field.name)
        if check == "positive" and _base_type(field) is int:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{{}} must be a positive integer; got {value!r}.", field.name)
        elif check == "positive" and not value > 0:
            raise ConfigError(f"{{}} must be positive; got {value!r}.", field.name)
        elif check == "non_negative" and not value >= 0:
            raise ConfigError(f"{{}} must be >= 0; got {value!r}.", field.name)
        elif check == "dir" and not os.path.isdir(value):
            raise ConfigError(f"{{}}: image folder not found: {value!r}", field.name)
        elif check == "exists" and not os.path.exists(value):
            raise ConfigError(f"{{}}: not found: {value!r}", field.name)
    config.check()
    return config


def resolve(config):
    """A `PretrainConfig` with the settings that follow from others filled in (no None left).

    The one place they are worked out: `projector_layers` from the backbone (2 for
    resnet18_cifar, App. D; else 3) and `blur` from the image size (off at <= 32 px), by
    `recipe.projector_layers_for` and `recipe.blur_by_default`.
    """
    layers = config.projector_layers or recipe.projector_layers_for(config.backbone)
    blur = config.blur if config.blur is not None else recipe.blur_by_default(config.image_size)
    return dataclasses.replace(config, projector_layers=layers, blur=blur)


def resumable(config_class):
    """The names of the settings that may change when a run is resumed."""
    return tuple(f.name for f in dataclasses.fields(config_class) if f.metadata["resumable"])


def _base_type(field):
    """`int` for `int` and `int | None`, and so on."""
    if isinstance(field.type, types.UnionType):
        return next(t for t in typing.get_args(field.type) if t is not type(None))
    return field.type


def define_flags(config_class, flag_values=None):
    """Defines one absl flag per field of `config_class`, with its help text.

    Args:
        config_class: `PretrainConfig`, `LinearConfig` or `KnnConfig`.
        flag_values: an `absl.flags.FlagValues` (default: the global `FLAGS`).
    """
    from absl import flags

    fv = flags.FLAGS if flag_values is None else flag_values
    # Registered as the main script's own flags, so that --helpshort lists them.
    where = {"flag_values": fv, "module_name": main_module_name()}
    start_command_flags([f.name for f in dataclasses.fields(config_class)], fv)
    for field in dataclasses.fields(config_class):
        default = field.default
        help_text, choices = field.metadata["help"], field.metadata["choices"]
        kind = _base_type(field)
        if choices:
            flags.DEFINE_enum(field.name, default, list(choices), help_text, **where)
        elif kind is bool:
            flags.DEFINE_bool(field.name, default, help_text, **where)
        elif kind is int:
            flags.DEFINE_integer(field.name, default, help_text, **where)
        elif kind is float:
            flags.DEFINE_float(field.name, default, help_text, **where)
        else:
            flags.DEFINE_string(field.name, default, help_text, **where)


_COMMAND_FLAGS = set()  # the flags the commands defined in this process


def start_command_flags(names=(), flag_values=None):
    """Removes the flags a command defined before in this process; `names` will be defined.

    One command after another in a process (the tests call the commands in-process): each
    defines its own flags, with its own defaults and required ones, and none of the last
    command's may stay behind.
    """
    from absl import flags

    fv = flags.FLAGS if flag_values is None else flag_values
    for name in sorted(_COMMAND_FLAGS | set(names)):
        if name in fv:
            delattr(fv, name)
    _COMMAND_FLAGS.clear()
    _COMMAND_FLAGS.update(names)


def main_module_name():
    """The module name absl gives the running script (`--helpshort` shows its flags)."""
    return sys.argv[0]


def from_flags(config_class, flag_values=None, **overrides):
    """The `config_class` instance the parsed flags describe (`overrides` win)."""
    from absl import flags

    fv = flags.FLAGS if flag_values is None else flag_values
    values = {f.name: fv[f.name].value for f in dataclasses.fields(config_class)}
    return config_class(**{**values, **overrides})
