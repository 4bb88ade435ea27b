"""simsiam_keras: SimSiam (Chen & He, CVPR 2021) in Keras 3 on TensorFlow, JAX and PyTorch.

The names here import without TensorFlow (they run on every backend). The TensorFlow input
pipeline is `simsiam_keras.data` / `simsiam_keras.augment`, the SavedModel export
`simsiam_keras.export`.
"""

from simsiam_keras.backbones import BACKBONES, build_resnet, feature_dim
from simsiam_keras.device_augment import ViewAugment
from simsiam_keras.heads import build_predictor, build_projector
from simsiam_keras.knn import extract_features, knn_accuracy, knn_predict
from simsiam_keras.lars import LARS
from simsiam_keras.linear import LinearClassifier, load_backbone
from simsiam_keras.losses import negative_cosine_similarity, output_std, simsiam_loss
from simsiam_keras.model import SimSiam
from simsiam_keras.monitors import CollapseMonitor, KNNMonitor
from simsiam_keras.optim import SGD, SimSiamSchedule, simsiam_optimizer

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "LARS",
    "SGD",
    "CollapseMonitor",
    "KNNMonitor",
    "LinearClassifier",
    "SimSiam",
    "SimSiamSchedule",
    "ViewAugment",
    "build_predictor",
    "build_projector",
    "build_resnet",
    "extract_features",
    "feature_dim",
    "knn_accuracy",
    "knn_predict",
    "load_backbone",
    "negative_cosine_similarity",
    "output_std",
    "simsiam_loss",
    "simsiam_optimizer",
]
