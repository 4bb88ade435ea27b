"""Install simsiam_keras: `pip install -e .` (extras: test, jax, torch)."""

from setuptools import find_packages, setup

setup(
    name="simsiam_keras",
    version="0.1.0",
    description="SimSiam (Chen & He, CVPR 2021) in Keras 3, on TensorFlow, JAX and PyTorch.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["simsiam_keras", "simsiam_keras.*"]),
    python_requires=">=3.10",
    # The scripts/*.py commands, installed: simsiam-pretrain --flagfile configs/in1k.cfg, ...
    entry_points={
        "console_scripts": [
            "simsiam-pretrain=simsiam_keras.commands:pretrain",
            "simsiam-linear-eval=simsiam_keras.commands:linear_eval",
            "simsiam-knn-eval=simsiam_keras.commands:knn_eval",
            "simsiam-export=simsiam_keras.commands:export",
            "simsiam-convert=simsiam_keras.commands:convert",
        ]
    },
    install_requires=[
        "keras>=3.15",
        "tensorflow>=2.16",
        "tensorflow-datasets>=4.9",
        # tensorflow-datasets 4.9.10 imports it on every Python but declares it only for < 3.9:
        # without it no dataset can be prepared ("No module named importlib_resources").
        "importlib_resources",
        "absl-py>=1.0",
        "tensorboard>=2.16",  # summaries of pretraining runs (not pulled in by tensorflow 2.21)
        "numpy>=1.26",
        "scikit-learn>=1.3",  # the embedded offline dataset (8x8 digits) ships with it
        "matplotlib>=3.7",  # training plots and pictures of the views
        "pillow>=10",
        # --augment_impl=kerascv (simsiam_keras/kerascv_views.py), the users' augmentation
        # library; imported only there, so the TensorFlow-free modules run without it.
        "keras-cv>=0.9",
    ],
    extras_require={
        # torch 2.13.0 is the CPU build on this project's machines; a looser pin pulls a multi-GB
        # CUDA build from PyPI.
        "torch": ["torch==2.13.0"],
        "jax": ["jax>=0.4.30"],
        "test": ["pytest>=8", "pytest-xdist>=3", "ruff>=0.5"],
    },
)
