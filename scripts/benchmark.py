r"""Speed benchmarks; the last printed line is one JSON object.

  python scripts/benchmark.py step --backbone resnet18_cifar --image_size 32 --batch_size 128
  python scripts/benchmark.py pipeline --train_dir DIR --image_size 224 --batch_size 64

`step`: image pairs per second through `SimSiam.train_step` on random inputs, timed per batch
inside one `fit` call after a warm-up (the first steps trace and compile: docs/keras_notes.md,
trap 18), the median over the timed steps. Works on any backend (KERAS_BACKEND). Compare side by
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
flags.DEFINE_bool("blur", True, "`pipeline`: include the Gaussian blur (false: CIFAR variant).")
flags.DEFINE_bool("fused", False, "`pipeline`: decode each view's JPEG crop separately.")
flags.DEFINE_bool("compiled", True, "`pipeline`: XLA-compile the steps after the crop.")
flags.DEFINE_enum("augment_on", "host", ["host", "device"], "`pipeline`: where views augment.")
flags.DEFINE_list(
    "ablate",
    [],
    "`pipeline` profile: steps to replace by a no-op (jitter, blur, antialias: plain bilinear "
    "resize) to see what each costs. Not the recipe; for profiling only.",
)
flags.DEFINE_enum(
    "impl",
    "simsiam_keras",
    ["simsiam_keras", "kerascv"],
    "`pipeline`: this project's per-image ops, or the nearest KerasCV layer pipeline (batched "
    "layers after a per-image resize to 1.15 x image_size; not the paper's semantics, for the "
    "speed comparison behind augment.py's choice).",
)


def benchmark_step():
    import keras
    import numpy as np

    import simsiam_keras as sk

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

    keras.utils.set_random_seed(0)
    size, batch = FLAGS.image_size, FLAGS.batch_size
    backbone = sk.build_resnet(FLAGS.backbone, width=FLAGS.width, image_size=size)
    layers = 2 if FLAGS.backbone == "resnet18_cifar" else 3
    model = sk.SimSiam(backbone, dim=FLAGS.dim, pred_dim=FLAGS.pred_dim, projector_layers=layers)
    steps = FLAGS.warmup + FLAGS.steps
    model.compile(optimizer=sk.simsiam_optimizer(batch_size=batch, epochs=1, steps_per_epoch=steps))
    rng = np.random.default_rng(0)
    x1, x2 = (rng.normal(size=(batch, size, size, 3)).astype("float32") for _ in range(2))
    timer = StepTimer()
    model.fit(RandomViews(x1, x2, steps), epochs=1, verbose=0, callbacks=[timer])
    median = statistics.median(timer.times[FLAGS.warmup :])
    return {
        "what": "keras_step",
        "backend": keras.backend.backend(),
        "backbone": FLAGS.backbone,
        "width": FLAGS.width,
        "image_size": size,
        "batch_size": batch,
        "steps": FLAGS.steps,
        "median_step_s": median,
        "pairs_per_s": batch / median,
    }


def _kerascv_two_views(source):
    import keras_cv
    import tensorflow as tf
    from keras import layers

    from simsiam_keras import augment

    size = FLAGS.image_size
    blur = [keras_cv.layers.RandomGaussianBlur(kernel_size=2 * (size // 20) + 1, factor=(0.1, 2.0))]
    pipeline = keras_cv.layers.Augmenter(
        [
            keras_cv.layers.RandomCropAndResize((size, size), (0.2, 1.0), (3 / 4, 4 / 3)),
            keras_cv.layers.RandomApply(
                keras_cv.layers.RandomColorJitter((0, 1), 0.4, 0.4, (0.3, 0.7), 0.1), rate=0.8
            ),
            keras_cv.layers.RandomApply(keras_cv.layers.Grayscale(output_channels=3), rate=0.2),
        ]
        + ([keras_cv.layers.RandomApply(blur[0], rate=0.5)] if FLAGS.blur else [])
        + [keras_cv.layers.RandomFlip("horizontal"), layers.Normalization(axis=-1)]
    )
    pipeline.layers[-1].adapt(tf.zeros([1, 1, 1, 3]) + 0.5)
    stored = int(size * 1.15)

    def load(item, label):
        return tf.image.resize(augment.full_image(item, source.kind), (stored, stored))

    ds = source.dataset.repeat().shuffle(10_000).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(FLAGS.batch_size, drop_remainder=True)
    ds = ds.map(lambda x: ((pipeline(x), pipeline(x)),), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


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
    if FLAGS.impl == "kerascv":
        ds = _kerascv_two_views(source)
    else:
        ds = data.two_view_dataset(
            source,
            FLAGS.batch_size,
            FLAGS.image_size,
            blur=FLAGS.blur,
            repeat=True,
            fused=FLAGS.fused,
            compiled=FLAGS.compiled,
            augment_on=FLAGS.augment_on,
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
        "impl": FLAGS.impl,
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


def main(argv):
    commands = {"step": benchmark_step, "pipeline": benchmark_pipeline}
    if len(argv) != 2 or argv[1] not in commands:
        raise cli.UsageError(f"Usage: benchmark.py {{{'|'.join(commands)}}} [--flags]")
    if FLAGS.train_dir and not os.path.isdir(FLAGS.train_dir):
        raise cli.UsageError(f"--train_dir: folder not found: {FLAGS.train_dir!r}")
    print(json.dumps(commands[argv[1]]()))


if __name__ == "__main__":
    cli.run(main, positional=1)
