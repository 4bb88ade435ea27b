import math

import keras
import numpy as np
import pytest

import simsiam_keras as sk
from simsiam_keras import optim

pytestmark = pytest.mark.multibackend


def test_schedule_is_per_epoch_cosine_as_official_code():
    schedule = optim.SimSiamSchedule(peak_lr=0.1, steps_per_epoch=3, epochs=4)
    for step in range(12):
        epoch = step // 3
        expected = 0.1 * 0.5 * (1 + math.cos(math.pi * epoch / 4))
        assert float(keras.ops.convert_to_numpy(schedule(step))) == pytest.approx(
            expected, rel=1e-6
        )


def test_schedule_warmup_is_linear_then_cosine():
    schedule = optim.SimSiamSchedule(peak_lr=1.0, steps_per_epoch=2, epochs=6, warmup_epochs=2)
    values = [float(keras.ops.convert_to_numpy(schedule(s))) for s in range(12)]
    np.testing.assert_allclose(values[:4], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
    np.testing.assert_allclose(values[4:6], [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(values[6], 0.5 * (1 + math.cos(math.pi / 4)), rtol=1e-6)


def test_sgd_matches_torch_sgd_across_lr_changes_with_fixed_predictor_lr():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shapes = {"encoder_w": (3, 4), "encoder_b": (4,), "predictor_w": (4, 2)}
    init = {k: rng.normal(size=s).astype("float32") for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s).astype("float32") for k, s in shapes.items()} for _ in range(6)]
    schedule = optim.SimSiamSchedule(peak_lr=0.5, steps_per_epoch=2, epochs=3)  # lr changes twice
    opt = optim.SGD(schedule, momentum=0.9, weight_decay=0.1, fixed_lr_pattern="^predictor")
    variables = [keras.Variable(init[k], name=k) for k in shapes]

    params = {k: torch.nn.Parameter(torch.tensor(init[k])) for k in shapes}
    ref = torch.optim.SGD(
        [
            {"params": [params["encoder_w"], params["encoder_b"]]},
            {"params": [params["predictor_w"]], "fix_lr": True},
        ],
        lr=0.5,
        momentum=0.9,
        weight_decay=0.1,
    )
    for step, g in enumerate(grads):
        # As the official adjust_learning_rate: the predictor group keeps the initial lr.
        for group in ref.param_groups:
            epoch = step // 2
            group["lr"] = (
                0.5 if "fix_lr" in group else 0.5 * 0.5 * (1 + math.cos(math.pi * epoch / 3))
            )
        for k, p in params.items():
            p.grad = torch.tensor(g[k])
        ref.step()
        opt.apply([g[v.path] for v in variables], variables)
        for v in variables:
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(v),
                params[v.path].detach().numpy(),
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"{v.path} after step {step}",
            )


def test_keras_builtin_sgd_differs_from_torch_rule_when_lr_changes():
    """Why optim.SGD exists (docs/keras_notes.md, traps 9, 17): Keras's rule is not PyTorch's."""
    schedule = optim.SimSiamSchedule(peak_lr=0.5, steps_per_epoch=1, epochs=3)
    ours, builtin = keras.Variable(np.ones(3, "float32")), keras.Variable(np.ones(3, "float32"))
    opt_ours = optim.SGD(schedule, momentum=0.9)
    opt_builtin = keras.optimizers.SGD(schedule, momentum=0.9)
    for _ in range(3):
        g = keras.ops.convert_to_tensor(np.full(3, 0.3, "float32"))
        opt_ours.apply([g], [ours])
        opt_builtin.apply([g], [builtin])
    assert not np.allclose(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(builtin))


def test_recipe_scales_lr_and_fixes_only_predictor_variables():
    backbone = sk.build_resnet("resnet18_cifar", width=0.125, image_size=8)
    model = sk.SimSiam(backbone, dim=16, pred_dim=4, projector_layers=2)
    opt = sk.simsiam_optimizer(base_lr=0.05, batch_size=512, epochs=10, steps_per_epoch=5)
    assert opt.fixed_lr == pytest.approx(0.1)
    assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(0.1)
    opt.build(model.trainable_variables)
    fixed = [v.path for v, f in zip(model.trainable_variables, opt._fixed) if f]
    assert fixed == [v.path for v in model.predictor.trainable_variables]
    no_fix = sk.simsiam_optimizer(fix_pred_lr=False)
    assert no_fix.fixed_lr_pattern is None


def test_optimizer_config_round_trip():
    opt = sk.simsiam_optimizer(base_lr=0.03, batch_size=256, epochs=8, steps_per_epoch=3)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(clone, optim.SGD)
    assert clone.l2_weight_decay == opt.l2_weight_decay and clone.fixed_lr == opt.fixed_lr


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"base_lr": -0.1}, "base_lr"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"steps_per_epoch": -3}, "steps_per_epoch"),
    ],
)
def test_bad_recipe_arguments_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sk.simsiam_optimizer(**kwargs)


def test_bad_sgd_arguments_raise():
    with pytest.raises(ValueError, match="learning_rate"):
        optim.SGD(learning_rate=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        optim.SGD(weight_decay=-1.0)
    with pytest.raises(ValueError, match="fixed_lr_pattern"):
        optim.SGD(fixed_lr_pattern="nothing_matches").build([keras.Variable(np.ones(2), name="w")])
