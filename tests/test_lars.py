import keras
import numpy as np
import pytest

from simsiam_keras.lars import LARS

pytestmark = pytest.mark.multibackend

SHAPES = {"kernel": (6, 3), "bias": (3,), "zero_init": (4,), "scalar_like": (1,)}
STEPS = 5


def _problem(seed=0):
    """Initial values and per-step gradients exercising every branch of the LARC rule."""
    rng = np.random.default_rng(seed)
    init = {k: rng.normal(size=s).astype("float32") for k, s in SHAPES.items()}
    init["zero_init"][:] = 0.0  # ||w|| = 0: raw gradient on the first nonzero-gradient step
    grads = [
        {k: rng.normal(scale=0.1, size=s).astype("float32") for k, s in SHAPES.items()}
        for _ in range(STEPS)
    ]
    grads[0]["zero_init"][:] = 0.0  # both norms zero: stays at 0 after step 0
    grads[2]["kernel"][:] = 0.0  # ||g|| = 0 with ||w|| > 0: no scaling, no weight decay
    grads[3]["bias"][:] = 0.0
    return init, grads


def _torch_reference(init, grads, lrs, weight_decay, trust_coefficient, eps=1e-8):
    """apex LARC(clip=False).step() around torch.optim.SGD(momentum=0.9), written out."""
    torch = pytest.importorskip("torch")
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    sgd = torch.optim.SGD(list(params.values()), lr=lrs[0], momentum=0.9, weight_decay=weight_decay)
    history = []
    for lr, g in zip(lrs, grads):
        for k, p in params.items():
            p.grad = torch.tensor(g[k])
        with torch.no_grad():
            group = sgd.param_groups[0]
            group["lr"] = lr
            wd = group["weight_decay"]
            group["weight_decay"] = 0
            for p in group["params"]:
                param_norm = torch.norm(p.data)
                grad_norm = torch.norm(p.grad.data)
                if param_norm != 0 and grad_norm != 0:
                    adaptive_lr = (
                        trust_coefficient * param_norm / (grad_norm + param_norm * wd + eps)
                    )
                    p.grad.data += wd * p.data
                    p.grad.data *= adaptive_lr
        sgd.step()
        group["weight_decay"] = wd
        history.append({k: p.detach().numpy().copy() for k, p in params.items()})
    return history


def _run_keras(opt, init, grads, lrs=None):
    variables = [keras.Variable(init[k], name=k) for k in SHAPES]
    history = []
    for step, g in enumerate(grads):
        if lrs is not None:
            opt.learning_rate = lrs[step]
        opt.apply([g[v.path] for v in variables], variables)
        history.append({v.path: keras.ops.convert_to_numpy(v) for v in variables})
    return history


def _assert_same(history, reference):
    for step, (ours, ref) in enumerate(zip(history, reference)):
        for k in SHAPES:
            np.testing.assert_allclose(
                ours[k], ref[k], rtol=1e-6, atol=1e-7, err_msg=f"{k} after step {step}"
            )


@pytest.mark.parametrize("trust_coefficient", [0.001, 0.3])
def test_lars_matches_apex_larc_around_torch_sgd_with_a_schedule(trust_coefficient):
    init, grads = _problem()
    schedule = keras.optimizers.schedules.CosineDecay(1.6, decay_steps=STEPS)
    lrs = [float(keras.ops.convert_to_numpy(schedule(s))) for s in range(STEPS)]
    opt = LARS(schedule, trust_coefficient=trust_coefficient)
    history = _run_keras(opt, init, grads)
    _assert_same(history, _torch_reference(init, grads, lrs, 0.0, trust_coefficient))
    # The zero-norm branches did what the rule says.
    np.testing.assert_array_equal(history[0]["zero_init"], 0.0)
    np.testing.assert_allclose(history[1]["zero_init"], -lrs[1] * grads[1]["zero_init"], rtol=1e-6)


def test_lars_matches_reference_with_weight_decay_and_lr_set_between_steps():
    init, grads = _problem(seed=1)
    lrs = [0.8, 0.5, 1.2, 0.05, 0.3]
    opt = LARS(learning_rate=lrs[0], weight_decay=0.5, trust_coefficient=0.2)
    history = _run_keras(opt, init, grads, lrs=lrs)
    _assert_same(history, _torch_reference(init, grads, lrs, 0.5, 0.2))
    without_wd = _run_keras(LARS(learning_rate=lrs[0], trust_coefficient=0.2), init, grads, lrs)
    assert not np.allclose(history[-1]["kernel"], without_wd[-1]["kernel"], rtol=1e-4)


@pytest.mark.parametrize("eps", [0.0, 1.0])
def test_lars_first_step_is_trust_ratio_times_lr(eps):
    w0 = np.array([3.0, 4.0], "float32")  # ||w|| = 5
    g = np.array([0.0, 2.0], "float32")  # ||g|| = 2
    var = keras.Variable(w0)
    LARS(learning_rate=2.0, trust_coefficient=0.01, eps=eps).apply([g], [var])
    # w -= lr * g * trust * ||w|| / (||g|| + eps)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(var), w0 - 2.0 * g * 0.01 * 5.0 / (2.0 + eps), rtol=1e-6
    )


def test_lars_config_round_trip():
    schedule = keras.optimizers.schedules.CosineDecay(1.6, decay_steps=90)
    opt = LARS(schedule, momentum=0.8, weight_decay=1e-4, trust_coefficient=0.002, eps=1e-7)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(clone, LARS)
    assert isinstance(clone._learning_rate, keras.optimizers.schedules.CosineDecay)
    assert (clone.momentum, clone.l2_weight_decay, clone.trust_coefficient, clone.eps) == (
        0.8,
        1e-4,
        0.002,
        1e-7,
    )
    assert clone.get_config() == opt.get_config()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"momentum": -0.9}, "momentum"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"trust_coefficient": -0.001}, "trust_coefficient"),
        ({"trust_coefficient": 0.0}, "trust_coefficient"),
        ({"eps": -1e-8}, "eps"),
    ],
)
def test_bad_lars_arguments_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LARS(**kwargs)
