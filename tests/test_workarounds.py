"""The private Keras names `workarounds.py` relies on: each test fails when Keras changes one.

The two multi-worker bugs themselves are probed in the two-worker test
(tests/test_distributed.py), which fails once they are fixed upstream.
"""

import keras
import numpy as np

import simsiam_keras as sk
from simsiam_keras import optim, workarounds
from tests.helpers import tiny_simsiam


def _views(n=8, size=16):
    rng = np.random.default_rng(0)
    return tuple(rng.normal(size=(n, size, size, 3)).astype("float32") for _ in range(2))


def test_fit_still_calls_the_symbolic_build_the_mixins_override(monkeypatch):
    # `SkipSymbolicBuild` and `LocalSymbolicBuild` override `Trainer._maybe_symbolic_build`; if
    # Keras renamed it, `fit` would no longer reach them and multi-worker training would break.
    asked = []

    def skip(model):
        asked.append(type(model).__name__)
        return False

    monkeypatch.setattr(workarounds, "skip_symbolic_build", skip)
    model = tiny_simsiam()
    model.compile(optimizer=optim.SGD(0.01))
    model.fit(_views(), batch_size=4, epochs=1, verbose=0)
    classifier = sk.LinearClassifier(tiny_simsiam().backbone, 10)
    classifier.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["acc"])
    classifier.fit(_views()[0], np.arange(8) % 10, batch_size=4, epochs=1, verbose=0)
    assert asked == ["SimSiam", "LinearClassifier"]


def test_tensorboard_numbers_batches_from_the_optimizer_step(tmp_path):
    # `GlobalStepTensorBoard` starts Keras's private batch count (`_global_train_batch`) at the
    # optimiser's step; Keras must still count on from it.
    model = tiny_simsiam()
    model.compile(optimizer=optim.SGD(0.01))
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(5)
    board = workarounds.GlobalStepTensorBoard(str(tmp_path), update_freq=1)
    board.set_model(model)
    board.on_train_begin()
    board.on_train_batch_begin(0)
    board.on_train_batch_end(0, {"loss": 0.0})
    assert board._global_train_batch == 6
    board.on_epoch_end(0, {"loss": 0.0, "lr": 0.01})  # SimSiam's lr is dropped, not written
    board.on_train_end()
    assert keras.__version__  # the installed Keras these names were checked against
