"""Test set-up: the backend (TensorFlow unless KERAS_BACKEND says otherwise) and a TF blocker.

With SIMSIAM_BLOCK_TF=1 (set by tests/test_backends.py for the JAX and PyTorch runs), importing
TensorFlow fails, which proves that the model, losses, heads, backbones and optimiser need no
TensorFlow: the accelerator machines have none.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


if os.environ.get("SIMSIAM_BLOCK_TF") == "1":
    # A None entry makes `import tensorflow` raise ImportError and `importlib.util.find_spec`
    # report it absent, exactly as on a machine without TensorFlow.
    for _name in ("tensorflow", "tensorflow_datasets", "keras_cv"):
        sys.modules[_name] = None
    # Modules that are TensorFlow by design (tf.data, augmentation ops) are not collected there;
    # only tests marked `multibackend` run in those processes anyway.
    collect_ignore = ["test_augment.py", "test_data.py", "test_linear.py"]


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _keras_global_policy():
    """Each test starts in float32: a command run in-process may have set a mixed policy."""
    yield
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.mixed_precision.set_global_policy("float32")


def pytest_collection_modifyitems(config, items):
    """The `long` tests first: pytest-xdist hands tests out in this order, and a long test
    started last would keep one worker busy while the other waits."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
