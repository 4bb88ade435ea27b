r"""Speed benchmarks; the last printed line is one JSON object.

  python benchmarks/benchmark.py step --backbone resnet18_cifar --image_size 32 --batch_size 128
  python benchmarks/benchmark.py pipeline --train_dir DIR --image_size 224 --batch_size 64

`step`: image pairs per second through `SimSiam.train_step` on random inputs, timed per batch
inside one `fit` call after a warm-up (the first steps trace and compile: docs/keras_notes.md,
trap 18), the median over the timed steps. Works on any backend (KERAS_BACKEND) and device, and
without TensorFlow on JAX and PyTorch (the GPU check, benchmarks/gpu_check.sh). It also prints
the model's training FLOPs (`simsiam_keras.flops`), the achieved TFLOP/s, and their fraction of
the backend's matrix-product peak measured in the same run (`--peak_matmul`). Compare side by
side with `benchmarks/torch_reference.py step` on the same machine, never with a bare time.

`pipeline`: two-view image pairs per second out of `data.two_view_dataset` (decode, both views'
augmentation, batching) from an image folder (`--train_dir`) or the embedded digits, after
`--warmup` batches. Compare with `torch_reference.py pipeline` on the same folder, batch size and
cores (`--blur=false` for the CIFAR variant, as its `--no-blur`).
"""

import json
import os
import statistics
import time

from simsiam_keras import cli  # no TensorFlow import

cli.quiet_logs()  # before anything imports TensorFlow

from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "backbone",
    "resnet18_cifar",
    ["resnet18_cifar", "resnet18", "resnet50"],
    "Backbone architecture.",
)
flags.DEFINE_integer("image_size", 32, "Input height and width.", lower_bound=8)
flags.DEFINE_integer("batch_size", 128, "Batch size (pairs of views).", lower_bound=1)
flags.DEFINE_float("width", 1.0, "Channel width multiplier.", lower_bound=0.01)
flags.DEFINE_integer("dim", 2048, "Projector output width.", lower_bound=1)
flags.DEFINE_integer("pred_dim", 512, "Predictor bottleneck width.", lower_bound=1)
flags.DEFINE_integer("steps", 10, "Timed steps.", lower_bound=1)
flags.DEFINE_integer("warmup", 3, "Untimed warm-up steps (batches for `pipeline`).", lower_bound=1)
flags.DEFINE_string("train_dir", None, "`pipeline`: image folder (default: embedded digits).")
flags.DEFINE_integer("batches", 20, "`pipeline`: timed batches.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "`views`: seed of the views and crops.")
flags.DEFINE_bool("blur", True, "`pipeline`: include the Gaussian blur (false: CIFAR variant).")
flags.DEFINE_bool("fused", False, "`pipeline`: decode each view's JPEG crop separately.")
flags.DEFINE_bool("compiled", True, "`pipeline`: XLA-compile the steps after the crop.")
flags.DEFINE_enum(
    "augment_on",
    "host",
    ["host", "device"],
    "Where views augment. `step`: device = uint8 whole images in, crop and the rest of the "
    "recipe inside the step (ViewAugment(crop_size=...)); host = ready views in.",
)
flags.DEFINE_enum(
    "mixed_precision", "none", ["none", "bfloat16", "float16"], "`step`: compute precision."
)
flags.DEFINE_integer(
    "peak_matmul",
    2048,
    "`step`: measure the backend's n x n matrix-product FLOP/s in the compute dtype, in the "
    "same run, for the utilisation (0: skip).",
    lower_bound=0,
)
flags.DEFINE_bool(
    "keras_bn",
    False,
    "`step` profile: Keras's own BatchNormalization pass instead of the fused one "
    "(simsiam_keras/batch_norm.py), to measure what the fused kernel saves.",
)
flags.DEFINE_float(
    "nominal_tflops", None, "`step`: the device's rated TFLOP/s, for a second utilisation."
)
flags.DEFINE_list(
    "ablate",
    [],
    "`pipeline` profile: steps to replace by a no-op (jitter, blur, antialias: plain bilinear "
    "resize) to see what each costs. Not the recipe; for profiling only.",
)
flags.DEFINE_enum(
    "augment_impl",
    "simsiam_keras",
    ["simsiam_keras", "kerascv"],
    "`pipeline`: the views of this package's ops or of keras-cv's layers, both in the same "
    "pipeline (`data.two_view_dataset(augment_impl=...)`).",
)


def _device_name():
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.devices()[0].device_kind
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return gpus[0].name if gpus else "cpu"


def matmul_peak_flops(dtype, n):
    """FLOP/s of the backend's `n` x `n` matrix product in `dtype`, on its default device.

    The ceiling the step's utilisation is quoted against, measured in the same process: the
    median over repeats of about 0.3 s, after a warm-up.
    """
    import keras
    from keras import ops

    a = keras.random.normal((n, n), dtype=dtype, seed=0)
    b = keras.random.normal((n, n), dtype=dtype, seed=1)

    def timed(repeats):
        start = time.perf_counter()
        for _ in range(repeats):
            c = ops.matmul(a, b)
        float(ops.convert_to_numpy(ops.cast(c[0, 0], "float32")))  # waits for the products
        return (time.perf_counter() - start) / repeats

    timed(2)
    repeats = max(2, int(0.3 / timed(2)))
    return 2 * n**3 / statistics.median(timed(repeats) for _ in range(3))


def benchmark_step():
    import keras
    import numpy as np

    import simsiam_keras as sk
    from simsiam_keras import flops, recipe

    class RandomViews(keras.utils.PyDataset):
        def __init__(self, x1, x2, length):
            super().__init__()
            self.x1, self.x2, self.length = x1, x2, length

        def __len__(self):
            return self.length

        def __getitem__(self, index):
            return ((self.x1, self.x2),)

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            keras.ops.convert_to_numpy(logs["loss"])  # wait for the step to finish
            self.times.append(time.perf_counter() - self.start)

    if FLAGS.keras_bn:
        from simsiam_keras.batch_norm import BatchNorm

        BatchNorm.call = keras.layers.BatchNormalization.call
    if FLAGS.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(f"mixed_{FLAGS.mixed_precision}")
    keras.utils.set_random_seed(0)
    size, batch = FLAGS.image_size, FLAGS.batch_size
    backbone = sk.build_resnet(FLAGS.backbone, width=FLAGS.width, image_size=size)
    layers = recipe.projector_layers_for(FLAGS.backbone)
    rng = np.random.default_rng(0)
    augment = None
    if FLAGS.augment_on == "device":  # uint8 whole images; crop and views inside the step
        augment = sk.ViewAugment(blur=recipe.blur_by_default(size), crop_size=size)
        source = max(size, round(size * recipe.EVAL_RESIZE_RATIO))  # 256 for 224
        shape = (batch, source, source, 3)
        x1, x2 = (rng.integers(0, 256, shape, dtype="uint8") for _ in range(2))
    else:
        x1, x2 = (rng.normal(size=(batch, size, size, 3)).astype("float32") for _ in range(2))
    model = sk.SimSiam(
        backbone, dim=FLAGS.dim, pred_dim=FLAGS.pred_dim, projector_layers=layers, augment=augment
    )
    steps = FLAGS.warmup + FLAGS.steps
    model.compile(optimizer=sk.simsiam_optimizer(batch_size=batch, epochs=1, steps_per_epoch=steps))
    if keras.backend.backend() != "tensorflow":  # on the accelerator, as the reference's inputs
        x1, x2 = keras.ops.convert_to_tensor(x1), keras.ops.convert_to_tensor(x2)
    timer = StepTimer()
    model.fit(RandomViews(x1, x2, steps), epochs=1, verbose=0, callbacks=[timer])
    median = statistics.median(timer.times[FLAGS.warmup :])
    train_flops = flops.simsiam_train_flops(model)
    achieved = train_flops * batch / median
    result = {
        "what": "keras_step",
        "backend": keras.backend.backend(),
        "device": _device_name(),
        "backbone": FLAGS.backbone,
        "width": FLAGS.width,
        "image_size": size,
        "batch_size": batch,
        "mixed_precision": FLAGS.mixed_precision,
        "augment_on": FLAGS.augment_on,
        "keras_bn": FLAGS.keras_bn,
        "steps": FLAGS.steps,
        "median_step_s": median,
        "pairs_per_s": batch / median,
        "train_gflop_per_pair": train_flops / 1e9,
        "achieved_tflops": achieved / 1e12,
    }
    if FLAGS.peak_matmul:
        dtype = keras.mixed_precision.global_policy().compute_dtype
        peak = matmul_peak_flops(dtype, FLAGS.peak_matmul)
        result.update(matmul_peak_tflops=peak / 1e12, utilisation_of_matmul_peak=achieved / peak)
    if FLAGS.nominal_tflops:
        result["utilisation_of_nominal"] = achieved / 1e12 / FLAGS.nominal_tflops
    return result


def _ablate(steps):
    import tensorflow as tf

    from simsiam_keras import augment

    no_ops = {
        "jitter": ("apply_jitter", lambda image, factors, order: image),
        "blur": ("gaussian_blur", lambda image, sigma: image),
        "antialias": ("resize", lambda image, size: tf.image.resize(image, (size, size))),
    }
    for step in steps:
        if step not in no_ops:
            raise cli.UsageError(f"--ablate: unknown step {step!r}; known: {sorted(no_ops)}")
        setattr(augment, *no_ops[step])


def benchmark_pipeline():
    from simsiam_keras import data, sources

    _ablate(FLAGS.ablate)
    if FLAGS.train_dir:
        source = sources.image_folder(FLAGS.train_dir)
    else:
        source = sources.embedded_digits("train", FLAGS.image_size)
    ds = data.two_view_dataset_variant(
        source,
        FLAGS.batch_size,
        FLAGS.image_size,
        blur=FLAGS.blur,
        repeat=True,
        fused=FLAGS.fused,
        compiled=FLAGS.compiled,
        augment_on=FLAGS.augment_on,
        augment_impl=FLAGS.augment_impl,
    )
    it = iter(ds)
    for _ in range(FLAGS.warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(FLAGS.batches):
        next(it)
    seconds = time.perf_counter() - start
    return {
        "what": "keras_pipeline",
        "augment_impl": FLAGS.augment_impl,
        "ablate": FLAGS.ablate,
        "source": source.name,
        "image_size": FLAGS.image_size,
        "batch_size": FLAGS.batch_size,
        "blur": FLAGS.blur,
        "fused": FLAGS.fused,
        "compiled": FLAGS.compiled,
        "augment_on": FLAGS.augment_on,
        "cores": os.cpu_count(),
        "pairs_per_s": FLAGS.batch_size * FLAGS.batches / seconds,
    }


def benchmark_views():
    """Statistics of the views of the first `--batches x --batch_size` images of a folder.

    The same statistics as `torch_reference.py views` (`view_statistics` there): channel means
    and stds of the views in [0, 1], the mean per-image std, the fraction of grayscale views,
    the mean |view 1 - view 2|, and the crop sampler's area fractions and aspect ratios (drawn
    for each image's own size by the implementation's sampler).
    """
    import numpy as np
    import tensorflow as tf

    from simsiam_keras import augment, data, sources

    source = (
        sources.image_folder(FLAGS.train_dir)
        if FLAGS.train_dir
        else (sources.embedded_digits("train", FLAGS.image_size))
    )
    count = FLAGS.batches * FLAGS.batch_size
    ds = data.two_view_dataset(
        source,
        FLAGS.batch_size,
        FLAGS.image_size,
        blur=FLAGS.blur,
        shuffle=False,
        deterministic=True,
        augment_impl=FLAGS.augment_impl,
        seed=FLAGS.seed,
    )
    mean, std = np.array(augment.IMAGENET_MEAN), np.array(augment.IMAGENET_STD)
    v1, v2 = [], []
    for ((a, b),) in ds.take(FLAGS.batches):
        v1.append(np.asarray(a) * std + mean)
        v2.append(np.asarray(b) * std + mean)
    v1, v2 = (np.concatenate(v).transpose(0, 3, 1, 2) for v in (v1, v2))  # as torch: N, C, H, W
    shapes = [
        tf.shape(augment.full_image(item, source.kind))[:2].numpy()
        for item, _ in source.dataset.take(count)
    ]
    if FLAGS.augment_impl == "kerascv":
        from simsiam_keras.kerascv_views import KerasCVRecipe

        crop = KerasCVRecipe(FLAGS.image_size, FLAGS.blur, FLAGS.seed).crop
        boxes = [np.asarray(crop.get_random_transformation())[0] for _ in shapes]
        hw = [((y2 - y1) * h, (x2 - x1) * w) for (y1, x1, y2, x2), (h, w) in zip(boxes, shapes)]
    else:
        hw = [
            np.asarray(augment.sample_crop(h, w, tf.constant([FLAGS.seed, i])))[2:]
            for i, (h, w) in enumerate(shapes)
        ]
    areas = [ch * cw / (h * w) for (ch, cw), (h, w) in zip(hw, shapes)]
    aspects = [cw / ch for ch, cw in hw]
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "torch_reference_stats",
        os.path.join(os.path.dirname(__file__), "..", "benchmarks", "view_stats.py"),
    )
    stats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stats)
    return {
        "what": "keras_views",
        "augment_impl": FLAGS.augment_impl,
        "images": len(v1),
        "size": FLAGS.image_size,
        **stats.view_statistics(v1, v2, areas, aspects),
    }


def main(argv):
    commands = {"step": benchmark_step, "pipeline": benchmark_pipeline, "views": benchmark_views}
    if len(argv) != 2 or argv[1] not in commands:
        raise cli.UsageError(f"Usage: benchmark.py {{{'|'.join(commands)}}} [--flags]")
    if FLAGS.train_dir and not os.path.isdir(FLAGS.train_dir):
        raise cli.UsageError(f"--train_dir: folder not found: {FLAGS.train_dir!r}")
    print(json.dumps(commands[argv[1]]()))


if __name__ == "__main__":
    cli.run(main, positional=1)
