"""simsiam_keras: SimSiam (Chen & He, CVPR 2021) in Keras 3 on TensorFlow, JAX and PyTorch."""

from simsiam_keras.backbones import BACKBONES, build_resnet, feature_dim
from simsiam_keras.heads import build_predictor, build_projector
from simsiam_keras.losses import negative_cosine_similarity, output_std, simsiam_loss
from simsiam_keras.model import SimSiam
from simsiam_keras.optim import SGD, SimSiamSchedule, simsiam_optimizer

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "SGD",
    "SimSiam",
    "SimSiamSchedule",
    "build_predictor",
    "build_projector",
    "build_resnet",
    "feature_dim",
    "negative_cosine_similarity",
    "output_std",
    "simsiam_loss",
    "simsiam_optimizer",
]
