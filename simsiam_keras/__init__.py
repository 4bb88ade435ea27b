"""simsiam_keras: SimSiam (Chen & He, CVPR 2021) in Keras 3 on TensorFlow, JAX and PyTorch.

The names here import without TensorFlow (they run on every backend). The TensorFlow input
pipeline is `simsiam_keras.data` / `simsiam_keras.augment`, the SavedModel export
`simsiam_keras.export`. Names are imported on first use, so that `simsiam_keras.cli` (what the
scripts load first, to quiet TensorFlow's logs) imports without Keras.

`keras.models.load_model` finds a saved class only if its module has registered it. So that
every `.keras` file this package writes loads after `import simsiam_keras` alone, the modules
that register classes are imported as soon as Keras is: now, if it is imported already, else
right after Keras's own import (`_RegisterWithKeras`, an import hook that does nothing else).
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

_HOMES = {
    "ArrayViews": "arrays",
    "BACKBONES": "backbones",
    "build_resnet": "backbones",
    "feature_dim": "backbones",
    "ViewAugment": "device_augment",
    "build_predictor": "heads",
    "build_projector": "heads",
    "extract_features": "knn",
    "extract_bank": "knn",
    "FeatureBank": "feature_bank",
    "knn_accuracy": "knn",
    "knn_predict": "knn",
    "LARS": "lars",
    "LinearClassifier": "linear",
    "load_backbone": "linear",
    "negative_cosine_similarity": "losses",
    "output_std": "losses",
    "simsiam_loss": "losses",
    "SimSiam": "model",
    "CollapseMonitor": "monitors",
    "KNNMonitor": "monitors",
    "SGD": "optim",
    "SimSiamSchedule": "optim",
    "simsiam_optimizer": "optim",
}

__all__ = sorted(_HOMES)


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module 'simsiam_keras' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"simsiam_keras.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_HOMES])


# The modules with classes registered for `keras.saving` (what `.keras` files of this package hold).
_SERIALIZABLE = ("batch_norm", "device_augment", "initializers", "lars", "linear", "model", "optim")


def _register():
    for name in _SERIALIZABLE:
        try:
            importlib.import_module(f"simsiam_keras.{name}")
        except ImportError as e:  # never break `import keras` itself
            warnings.warn(f"simsiam_keras.{name} could not register its classes: {e}", stacklevel=2)


class _AfterExec(importlib.abc.Loader):
    """Keras's own loader, then `_register()`; every other attribute is the loader's."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register()

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _RegisterWithKeras(importlib.abc.MetaPathFinder):
    """Finds `keras` as Python would, with `_AfterExec` around its loader; then steps aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _AfterExec(spec.loader)
        return spec


if "keras" in sys.modules:
    _register()
else:
    sys.meta_path.insert(0, _RegisterWithKeras())
