r"""SimSiam pretraining (paper Sec. 4; App. D for CIFAR).

  python scripts/pretrain.py                                  # quickstart: embedded digits
  python scripts/pretrain.py --flagfile configs/in1k.cfg      # workdir runs/in1k
  python scripts/pretrain.py --flagfile configs/cifar10.cfg --epochs 200
  python scripts/pretrain.py --train_dir ~/images --val_dir ~/val --image_size 224

With no flags it runs the quickstart offline on the embedded digits (a few minutes on 2 CPU
cores): pretrain, print the kNN accuracy of the pretrained encoder beside a random-init one,
export the backbone. Every flag can follow a --flagfile to override it. The workdir defaults to
runs/<flagfile name> (runs/quickstart without one). Running the same command again resumes
from the workdir's last checkpoint; on a finished run it prints the summary and changes
nothing. Ctrl-C (or SIGTERM) saves a checkpoint after the current step and exits with
130 (143). The last printed line is one JSON object (the summary also written to
WORKDIR/summary.json).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simsiam_keras import cli  # noqa: E402 (no TensorFlow import)

cli.quiet_logs()  # before anything imports TensorFlow

from absl import flags  # noqa: E402

flags.DEFINE_string(
    "workdir", None, "Checkpoints, logs, summary and export (default: runs/<flagfile name>)."
)
flags.DEFINE_string("dataset", "digits", "'digits' (embedded, offline) or a TFDS name.")
flags.DEFINE_string("data_dir", None, "TFDS data directory.")
flags.DEFINE_string("train_dir", None, "Image folder to pretrain on (selects the folder source).")
flags.DEFINE_string("val_dir", None, "Labelled image folder for the kNN monitor.")
flags.DEFINE_string("backbone", "resnet18_cifar", "resnet18_cifar | resnet18 | resnet50.")
flags.DEFINE_float("width", 0.25, "Channel width multiplier (1 = the paper's networks).")
flags.DEFINE_integer("image_size", 16, "Input height and width.")
flags.DEFINE_integer("batch_size", 64, "Global batch size (all replicas).")
flags.DEFINE_integer("epochs", 30, "Epochs.")
flags.DEFINE_float("base_lr", 0.3, "lr per 256 images (paper: 0.05 ImageNet, 0.03 CIFAR).")
flags.DEFINE_float("weight_decay", 5e-4, "L2 weight decay (paper: 1e-4 ImageNet, 5e-4 CIFAR).")
flags.DEFINE_bool("fix_pred_lr", True, "Keep the predictor's lr constant (paper Table 1).")
flags.DEFINE_integer("warmup_epochs", 0, "Linear warm-up epochs (paper: 10 for batch >= 1024).")
flags.DEFINE_integer("dim", 2048, "Projector output width.")
flags.DEFINE_integer("pred_dim", 512, "Predictor bottleneck width.")
flags.DEFINE_integer("projector_layers", None, "2 (CIFAR) or 3; default by backbone.")
flags.DEFINE_bool("blur", None, "Gaussian blur; default: on above 32 px.")
flags.DEFINE_enum(
    "strategy",
    "auto",
    list(cli.STRATEGIES),
    "auto: all local accelerators; one_device; mirrored: tf MirroredStrategy (SyncBN), JAX "
    "DataParallel; multi_worker: tf MultiWorkerMirroredStrategy from TF_CONFIG (run the same "
    "command on every worker, --workdir on shared storage; worker 0 writes). PyTorch: one "
    "device.",
)
flags.DEFINE_enum("mixed_precision", "none", list(cli.PRECISIONS), "Compute precision.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_bool("no_stop_gradient", False, "Remove the stop-gradient (the collapse ablation).")
flags.DEFINE_integer("knn_every", 5, "kNN monitor every N epochs (0: off).")
flags.DEFINE_integer(
    "knn_k", 20, "kNN monitor: neighbours (paper: 200; 20 for the 150-per-class digits)."
)
flags.DEFINE_integer("checkpoint_every", 200, "Steps between checkpoints.")
flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch (smoke runs).")
flags.DEFINE_bool("deterministic", True, "Fixed data order and views for the seed.")
flags.DEFINE_bool("export", True, "Export the backbone as a SavedModel at the end.")
flags.DEFINE_bool("compare_random_init", True, "Also report a random-init encoder's kNN.")
flags.DEFINE_float(
    "progress_every_s", 30.0, "Seconds between progress lines when not on a terminal."
)

FLAGS = flags.FLAGS


def main(argv):
    del argv
    from simsiam_keras import pretrain, report

    config = pretrain.PretrainConfig(
        workdir=FLAGS.workdir or cli.default_workdir(),
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        train_dir=FLAGS.train_dir,
        val_dir=FLAGS.val_dir,
        backbone=FLAGS.backbone,
        width=FLAGS.width,
        image_size=FLAGS.image_size,
        batch_size=FLAGS.batch_size,
        epochs=FLAGS.epochs,
        base_lr=FLAGS.base_lr,
        weight_decay=FLAGS.weight_decay,
        fix_pred_lr=FLAGS.fix_pred_lr,
        warmup_epochs=FLAGS.warmup_epochs,
        dim=FLAGS.dim,
        pred_dim=FLAGS.pred_dim,
        projector_layers=FLAGS.projector_layers,
        blur=FLAGS.blur,
        strategy=FLAGS.strategy,
        mixed_precision=FLAGS.mixed_precision,
        seed=FLAGS.seed,
        stop_gradient=not FLAGS.no_stop_gradient,
        knn_every=FLAGS.knn_every,
        knn_k=FLAGS.knn_k,
        checkpoint_every=FLAGS.checkpoint_every,
        steps_per_epoch=FLAGS.steps_per_epoch,
        deterministic=FLAGS.deterministic,
        export=FLAGS.export,
        compare_random_init=FLAGS.compare_random_init,
        progress_every_s=FLAGS.progress_every_s,
    )
    try:
        pretrain.validate(config)
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    summary = pretrain.run(config)
    knn, rand = summary.get("knn_top1"), summary.get("random_init_knn_top1")
    train = summary.get("train", "?")
    if knn is not None and rand is not None:
        print(f"kNN top-1: pretrained {knn:.1f} vs random-init {rand:.1f} ({train})")
    keys = ("train", "knn_top1", "random_init_knn_top1", "steps", "wall_s", "pairs_per_s",
            "export", "already_finished")  # fmt: skip
    line = {"what": "pretrain", **{k: summary.get(k) for k in keys}}
    line["already_finished"] = bool(summary.get("already_finished"))
    print(report.json_line(line))


if __name__ == "__main__":
    cli.run(main)
