import keras
import numpy as np
import pytest

import simsiam_keras as sk
from simsiam_keras import optim

# The train step, saving and fitting also run under JAX and PyTorch (tests/test_backends.py);
# the architecture checks are the same Keras layers on every backend.
multibackend = pytest.mark.multibackend


def _model(**kwargs):
    backbone = sk.build_resnet("resnet18_cifar", width=0.125, image_size=16)
    return sk.SimSiam(backbone, **{"dim": 32, "pred_dim": 8, "projector_layers": 2, **kwargs})


def _views(n=16, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 16, 16, 3)).astype("float32")
    noise = lambda: 0.3 * rng.normal(size=base.shape).astype("float32")  # noqa: E731
    return base + noise(), base + noise()


def _weights(model):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.trainable_variables]


@pytest.fixture(scope="module")
def one_step():
    """A model, its weights before and after one `fit` step, and that step's logs.

    Shared by the tests that continue from one trained step: under JAX each new model compiles
    its own train step, which costs more than the step itself.
    """
    keras.utils.set_random_seed(0)
    model = _model()
    model.compile(optimizer=optim.SGD(0.05, momentum=0.9, weight_decay=1e-4))
    before = _weights(model)
    x1, x2 = _views(8)
    logs = model.fit((x1, x2), batch_size=8, epochs=1, verbose=0).history
    return model, before, _weights(model), logs


@multibackend
def test_one_fit_step_changes_weights_and_logs_metrics(one_step):
    model, before, after, logs = one_step
    unchanged = [
        v.path for v, a, b in zip(model.trainable_variables, before, after) if np.array_equal(a, b)
    ]
    # With zero-init residual gammas no gradient reaches a block's first BN on step one, and
    # weight decay does not move a zero beta; every other weight moves.
    assert all(p.endswith("_bn1/beta") and p.startswith("stage") for p in unchanged), unchanged
    assert len(unchanged) == 8
    assert set(logs) == {"loss", "z_std", "lr"}
    assert -1.0 <= logs["loss"][0] <= 1.0
    assert logs["lr"][0] == pytest.approx(0.05)
    assert 0.0 < logs["z_std"][0] <= 1.0


def _inference_loss(model, x1, x2):
    out = model((x1, x2), training=False)
    loss = sk.simsiam_loss(out["p1"], out["p2"], out["z1"], out["z2"])
    return float(keras.ops.convert_to_numpy(loss))


@multibackend
def test_twenty_steps_on_a_fixed_batch_lower_the_loss(one_step):
    # Twenty more steps of the same shape: the compiled train step is reused.
    model = one_step[0]
    x1, x2 = _views(8, seed=1)
    first = _inference_loss(model, x1, x2)
    losses = model.fit((x1, x2), batch_size=8, epochs=20, verbose=0).history["loss"]
    assert losses[-1] < losses[0] - 0.1, losses
    assert _inference_loss(model, x1, x2) < first


def test_fit_accepts_dict_and_labelled_elements():
    model = _model()
    model.compile(optimizer=optim.SGD(0.01))
    x1, x2 = _views(8)
    model.fit({"x1": x1, "x2": x2}, batch_size=8, epochs=1, verbose=0)
    model.fit((x1, x2), np.zeros(8), batch_size=8, epochs=1, verbose=0)


@multibackend
def test_keras_save_and_load_give_identical_outputs(one_step, tmp_path):
    model = one_step[0]  # trained: the moving statistics have moved too
    x1, x2 = _views(8)
    path = str(tmp_path / "simsiam.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, sk.SimSiam) and isinstance(loaded.backbone, keras.Model)
    out, out_loaded = model((x1, x2)), loaded((x1, x2))
    for k in ("p1", "p2", "z1", "z2"):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(out[k]), keras.ops.convert_to_numpy(out_loaded[k])
        )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.backbone(x1)),
        keras.ops.convert_to_numpy(loaded.backbone(x1)),
    )
    assert isinstance(loaded.optimizer, optim.SGD)


def test_config_round_trip():
    model = _model(stop_gradient=False)
    clone = sk.SimSiam.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert (clone.dim, clone.pred_dim, clone.projector_layers, clone.stop_gradient) == (
        32,
        8,
        2,
        False,
    )
    assert len(clone.weights) == len(model.weights)


@pytest.mark.parametrize(
    "name, width, trainable",
    [("resnet18", 1.0, 11_176_512), ("resnet50", 1.0, 23_508_032)],
)
def test_backbone_parameter_counts_match_torchvision(name, width, trainable):
    # torchvision resnet18 / resnet50 parameters minus the fc layer.
    backbone = sk.build_resnet(name, width=width)
    count = sum(int(np.prod(v.shape)) for v in backbone.trainable_variables)
    assert count == trainable


def test_resnet50_is_v1_5_and_zero_inits_last_bn_of_each_block():
    backbone = sk.build_resnet("resnet50", width=0.125, image_size=32)
    assert backbone.get_layer("stage2_block1_conv1").strides == (1, 1)
    assert backbone.get_layer("stage2_block1_conv2").strides == (2, 2)
    assert not backbone.get_layer("stage2_block1_conv2").use_bias
    for layer in backbone.layers:
        if layer.name.endswith("_bn3"):
            assert np.all(keras.ops.convert_to_numpy(layer.gamma) == 0.0), layer.name
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.momentum == 0.9 and layer.epsilon == 1e-5
    assert backbone.output.shape == (None, 256)


def test_backbone_shapes_and_pytorch_default_initialisers():
    keras.utils.set_random_seed(0)
    backbone = sk.build_resnet("resnet18_cifar", width=0.5, image_size=32)
    feats = backbone(np.zeros((2, 32, 32, 3), "float32"))
    assert tuple(feats.shape) == (2, 256)
    assert backbone.get_layer("stem_conv").kernel_size == (3, 3)
    kernel = keras.ops.convert_to_numpy(backbone.get_layer("stage4_block1_conv2").kernel)
    fan_out = 3 * 3 * kernel.shape[-1]
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / fan_out), rel=0.05)
    model = sk.SimSiam(backbone, dim=512, pred_dim=128, projector_layers=2)
    dense = keras.ops.convert_to_numpy(model.predictor.get_layer("predictor_dense_2").kernel)
    bias = keras.ops.convert_to_numpy(model.predictor.get_layer("predictor_dense_2").bias)
    bound = 1.0 / np.sqrt(128)
    assert np.abs(dense).max() <= bound and np.abs(dense).max() > 0.95 * bound
    assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.9 * bound
    out = model.projector.get_layer("projector_bn_2")
    assert not out.center and not out.scale  # paper App. A: output BN without affine


def test_imagenet_heads_have_three_projector_layers():
    model = sk.SimSiam(sk.build_resnet("resnet18", width=0.125, image_size=32), dim=64, pred_dim=16)
    dense = [layer.name for layer in model.projector.layers if "dense" in layer.name]
    assert dense == ["projector_dense_1", "projector_dense_2", "projector_dense_3"]
    assert model.projector.output.shape == (None, 64)
    assert model.predictor.get_layer("predictor_dense_2").use_bias


def test_user_supplied_backbone():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    model = sk.SimSiam(backbone, dim=16, pred_dim=4)
    model.compile(optimizer=optim.SGD(0.01))
    x1 = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    model.fit((x1, x1), batch_size=4, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"dim": 0}, "dim"), ({"pred_dim": -1}, "pred_dim"), ({"projector_layers": 0}, "num_layers")],
)
def test_non_positive_dims_raise(kwargs, name):
    with pytest.raises(ValueError, match=f"{name}="):
        _model(**kwargs)


def test_bad_backbones_raise():
    with pytest.raises(ValueError, match="name='resnet1000'"):
        sk.build_resnet("resnet1000")
    with pytest.raises(ValueError, match="width"):
        sk.build_resnet("resnet18", width=0)
    inputs = keras.Input((8, 8, 3))
    not_pooled = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match="2-D"):
        sk.SimSiam(not_pooled)
    with pytest.raises(ValueError, match="backbone"):
        sk.SimSiam("resnet18")
