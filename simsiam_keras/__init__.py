"""simsiam_keras: SimSiam (Chen & He, CVPR 2021) in Keras 3 on TensorFlow, JAX and PyTorch.

The names here import without TensorFlow (they run on every backend). The TensorFlow input
pipeline is `simsiam_keras.data` / `simsiam_keras.augment`, the SavedModel export
`simsiam_keras.export`. Names are imported on first use, so that `simsiam_keras.cli` (what the
scripts load first, to quiet TensorFlow's logs) imports without Keras.
"""

import importlib

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
