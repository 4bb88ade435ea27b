"""`synchronized_bn="auto"`: SyncBN exactly when built under a multi-replica tf.distribute strategy.

The MirroredStrategy check needs 2 logical CPU devices, set before TensorFlow initialises its
devices, and a process of its own (docs/keras_notes.md, trap 3): it runs in the one
tests/test_distributed.py starts for its MirroredStrategy run (`mirrored_report`,
`check_mirrored_report`), where a SyncBN model also trains and equals one device.
"""

import json

import keras
import pytest

import simsiam_keras as sk
from simsiam_keras import heads

SIZE = 16


def _tiny_simsiam(**kwargs):
    backbone = sk.build_resnet("resnet18_cifar", width=0.125, image_size=SIZE, **kwargs)
    return sk.SimSiam(backbone, dim=32, pred_dim=8, projector_layers=2, **kwargs)


def _flags(model):
    """{part: [BatchNormalization.synchronized, ...]} for backbone, projector and predictor."""
    return {
        part: [
            layer.synchronized
            for layer in getattr(model, part).layers
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
        for part in ("backbone", "projector", "predictor")
    }


def _check_counts(flags):
    # resnet18_cifar: stem + 2 per block x 8 + 3 shortcuts; 2-layer projector: 2; predictor: 1.
    assert {part: len(v) for part, v in flags.items()} == {
        "backbone": 20,
        "projector": 2,
        "predictor": 1,
    }


@pytest.mark.multibackend
def test_auto_is_false_without_a_strategy():
    model = _tiny_simsiam()
    flags = _flags(model)
    _check_counts(flags)
    assert not any(any(v) for v in flags.values()), flags
    assert model.get_config()["synchronized_bn"] is False
    assert heads.resolve_synchronized_bn("auto") is False
    assert heads.resolve_synchronized_bn(True) is True
    with pytest.raises(ValueError, match='True, False or "auto"'):
        heads.resolve_synchronized_bn("yes")
    if keras.backend.backend() != "tensorflow":  # Keras's SyncBN is TensorFlow-only
        with pytest.raises(ValueError, match="only supported with the TensorFlow backend"):
            sk.build_resnet("resnet18_cifar", width=0.125, synchronized_bn=True)


def test_auto_is_false_under_a_one_replica_strategy():
    tf = pytest.importorskip("tensorflow")
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        assert tf.distribute.has_strategy()
        flags = _flags(_tiny_simsiam())
    assert not any(any(v) for v in flags.values()), flags


def check_mirrored_report(report):
    """The assertions on `mirrored_report`, which tests/distributed_run.py writes from the
    process of tests/test_distributed.py that already holds a MirroredStrategy on 2 logical
    CPU devices (a MirroredStrategy needs a process of its own: docs/keras_notes.md, trap 3)."""
    assert report["replicas"] == 2
    for key in ("auto", "reloaded", "explicit_false"):
        _check_counts(report[key])
    assert all(all(v) for v in report["auto"].values()), report["auto"]
    assert report["auto_config"] is True
    # The stored bool, not "auto": rebuilt outside any strategy it is still SyncBN.
    assert all(all(v) for v in report["reloaded"].values()), report["reloaded"]
    assert not any(any(v) for v in report["explicit_false"].values()), report["explicit_false"]


def mirrored_report(strategy):
    """What `synchronized_bn` resolves to for models built under a 2-replica `strategy`."""
    with strategy.scope():
        auto = _tiny_simsiam()
        explicit_false = _tiny_simsiam(synchronized_bn=False)
    config = auto.get_config()
    reloaded = sk.SimSiam.from_config(json.loads(json.dumps(config)))
    return {
        "replicas": strategy.num_replicas_in_sync,
        "auto": _flags(auto),
        "auto_config": config["synchronized_bn"],
        "reloaded": _flags(reloaded),
        "explicit_false": _flags(explicit_false),
    }
