r"""Where one SimSiam train step spends its time, per op type, on any runner.

    KERAS_BACKEND=tensorflow python benchmarks/profile_step.py keras
    KERAS_BACKEND=jax        python benchmarks/profile_step.py keras
    KERAS_BACKEND=torch      python benchmarks/profile_step.py keras
    ~/torchref/bin/python benchmarks/profile_step.py torch_reference

Trains `--steps` steps of the CIFAR ResNet-18 SimSiam (or `--arch`) on random inputs after a
warm-up, under the runner's own profiler: TensorFlow's and JAX's (both write an XSpace protobuf,
read here with TensorFlow's `xplane_pb2`), `torch.profiler` for the PyTorch backend and the
PyTorch reference (`torch_reference.py`'s model). Prints the top op types by self time, in ms
per step and % of the step's op time, then one JSON line. docs/speed.md holds the tables.
"""

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _xspace_self_times(logdir):
    """Self time (ps) per op type from the XSpace's host compute lines (TF executor, XLA:CPU)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = plane.event_metadata
        for line in plane.lines:
            if line.name == "python" or line.name.startswith("tf_data"):
                continue
            events = sorted(line.events, key=lambda e: (e.offset_ps, -e.duration_ps))
            stack = []  # (end, op) of enclosing events: a child's time leaves its parent's
            for event in events:
                while stack and stack[-1][0] <= event.offset_ps:
                    stack.pop()
                op = _op_type(names[event.metadata_id].name)
                if stack:
                    totals[stack[-1][1]] -= event.duration_ps
                totals[op] += event.duration_ps
                stack.append((event.offset_ps + event.duration_ps, op))
    return totals


def _op_type(name):
    """`scope/conv:_MklNativeConv2D` -> `_MklNativeConv2D`; XLA's `fusion.12` -> `fusion`."""
    name = name.split(":")[-1] if ":" in name else name
    return name.split(".")[0] if name[-1:].isdigit() else name


def profile_keras(args):
    """Self ms per op type over `args.steps` steps of `SimSiam.fit` on the Keras backend."""
    import keras
    import numpy as np

    import simsiam_keras as sk

    keras.utils.set_random_seed(0)
    backbone = sk.build_resnet(args.arch, image_size=args.size)
    layers = 2 if args.arch == "resnet18_cifar" else 3
    model = sk.SimSiam(backbone, projector_layers=layers)
    model.compile(optimizer=sk.simsiam_optimizer(args.batch, 1, 100))
    x = np.random.default_rng(0).normal(size=(args.batch, args.size, args.size, 3))
    x = x.astype("float32")

    def train(steps):
        xs = np.concatenate([x] * steps)
        model.fit((xs, xs), batch_size=args.batch, epochs=1, verbose=0)

    train(args.warmup)
    backend = keras.backend.backend()
    if backend == "torch":
        return _torch_profile(lambda: train(args.steps))
    logdir = tempfile.mkdtemp()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.profiler.experimental.start(logdir)
        train(args.steps)
        tf.profiler.experimental.stop()
    else:
        import jax

        with jax.profiler.trace(logdir):
            train(args.steps)
    waits = ("Execute", "Await")  # the host waiting on XLA's threads, not work
    times = _xspace_self_times(logdir)
    return {name: ps / 1e9 for name, ps in times.items() if not name.startswith(waits)}


def _torch_profile(run):
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}


def profile_torch_reference(args):
    """Self ms per op type over `args.steps` SGD steps of the PyTorch reference."""
    import torch

    sys.path.insert(0, HERE)
    import torch_reference as ref

    torch.manual_seed(0)
    arch_layers = ref.projector_layers_for(args.arch)
    model = ref.SimSiam(args.arch, projector_layers=arch_layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    x1, x2 = (torch.randn(args.batch, 3, args.size, args.size) for _ in range(2))

    def train(steps):
        for _ in range(steps):
            loss = ref.simsiam_loss(*model(x1, x2))
            opt.zero_grad()
            loss.backward()
            opt.step()

    train(args.warmup)
    return _torch_profile(lambda: train(args.steps))


def main():
    """Parses the command line, profiles one runner, prints the table and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runner", choices=["keras", "torch_reference"])
    parser.add_argument("--arch", default="resnet18_cifar")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    start = time.perf_counter()
    if args.runner == "keras":
        import keras

        runner = f"keras_{keras.backend.backend()}"
        times = profile_keras(args)
    else:
        runner = "torch_reference"
        times = profile_torch_reference(args)
    per_step = {k: v / args.steps for k, v in times.items() if v > 0}
    total = sum(per_step.values())
    top = sorted(per_step.items(), key=lambda kv: -kv[1])[: args.top]
    print(f"{runner}: {args.arch} {args.size}px batch {args.batch}, op self time per step")
    for name, ms in top:
        print(f"  {ms:9.1f} ms {100 * ms / total:5.1f} %  {name}")
    print(
        json.dumps(
            {
                "what": "profile_step",
                "runner": runner,
                "arch": args.arch,
                "size": args.size,
                "batch": args.batch,
                "op_ms_per_step": total,
                "wall_s": time.perf_counter() - start,
                "top": [[name, round(ms, 2)] for name, ms in top],
            }
        )
    )


if __name__ == "__main__":
    main()
