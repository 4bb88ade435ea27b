r"""Makes an ImageNet-like folder of ~400 px JPEGs from a small-image folder, for speed tests.

The 224 px pipeline comparison (docs/pipeline.md) is measured on JPEGs of ImageNet's typical sizes,
which no offline dataset ships. This upscales images of a `<class>/<image>` folder (for example
the CIFAR-10 training split as a folder, extracted outside the repository) to sizes cycling through
500x375, 375x500, 400x400 and 640x480 (bicubic), saved at JPEG quality 90, into
`OUT/<class>/<image>.jpg`.

    mkdir -p ~/cifar10 && tar xf cifar10-train.tar -C ~/cifar10
    python scripts/make_jpeg_folder.py --src ~/cifar10/train --out ~/jpeg400 --per_class 200

Never write the output into the repository.
"""

import os

from absl import flags  # noqa: E402
from PIL import Image  # noqa: E402

from simsiam_keras import cli  # no TensorFlow import

SIZES = ((500, 375), (375, 500), (400, 400), (640, 480))  # (width, height)

_SRC = flags.DEFINE_string("src", None, "Source folder of <class>/<image> files.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder (created).", required=True)
_PER_CLASS = flags.DEFINE_integer("per_class", 200, "Images per class.", lower_bound=1)
_QUALITY = flags.DEFINE_integer("quality", 90, "JPEG quality.", lower_bound=1, upper_bound=100)


def make_folder(src, out, per_class, quality=90):
    """Writes `per_class` upscaled JPEGs per class folder of `src` into `out`; returns the count."""
    if not os.path.isdir(src):
        raise ValueError(f"Source folder not found: {src!r}")
    classes = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
    if not classes:
        raise ValueError(f"{src!r} has no class subfolders (expected <class>/<image>).")
    count = 0
    for c in classes:
        os.makedirs(os.path.join(out, c), exist_ok=True)
        for name in sorted(os.listdir(os.path.join(src, c)))[:per_class]:
            with Image.open(os.path.join(src, c, name)) as im:
                size = SIZES[count % len(SIZES)]
                big = im.convert("RGB").resize(size, Image.BICUBIC)
            stem = os.path.splitext(name)[0]
            big.save(os.path.join(out, c, stem + ".jpg"), quality=quality)
            count += 1
    return count


def main(argv):
    del argv
    out = os.path.abspath(_OUT.value)
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    if out == repo or out.startswith(repo + os.sep):
        raise cli.UsageError(f"--out must be outside the repository ({repo}).")
    if not os.path.isdir(_SRC.value):
        raise cli.UsageError(f"--src: folder not found: {_SRC.value!r}")
    n = make_folder(_SRC.value, out, _PER_CLASS.value, _QUALITY.value)
    print(f"wrote {n} JPEGs to {out}")


if __name__ == "__main__":
    cli.run(main, tensorflow=False)
