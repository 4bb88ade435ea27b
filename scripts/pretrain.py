r"""SimSiam pretraining (paper Sec. 4; App. D for CIFAR).

  python scripts/pretrain.py                                  # quickstart: embedded digits
  python scripts/pretrain.py --flagfile configs/in1k.cfg      # workdir runs/in1k
  python scripts/pretrain.py --flagfile configs/cifar10.cfg --epochs 200
  python scripts/pretrain.py --train_dir ~/images --val_dir ~/val --image_size 224

Without --flagfile the defaults are the quickstart's (offline on the embedded digits, a few
minutes on 2 CPU cores: pretrain, print the kNN accuracy of the pretrained encoder beside a
random-init one, export the backbone); with one they are the paper's ImageNet recipe, which
the flagfile and the flags after it override (simsiam_keras/config.py). The workdir defaults to
runs/<flagfile name> (runs/quickstart without one). Running the same command again resumes
from the workdir's last checkpoint; on a finished run it prints the summary and changes
nothing. Ctrl-C (or SIGTERM) saves a checkpoint after the current step and exits with
130 (143). The last printed line is one JSON object (the summary also written to
WORKDIR/summary.json).
"""

from simsiam_keras import cli, config

cli.quiet_logs()  # before anything imports TensorFlow
config.define_flags(config.PretrainConfig, quickstart=cli.flagfile() is None)


def main(argv):
    del argv
    from absl import flags

    from simsiam_keras import pretrain, report

    workdir = flags.FLAGS.workdir or cli.default_workdir()
    summary = pretrain.run(config.from_flags(config.PretrainConfig, workdir=workdir))
    knn, rand = summary.get("knn_top1"), summary.get("random_init_knn_top1")
    if knn is not None and rand is not None:
        print(f"kNN top-1: pretrained {knn:.1f} vs random-init {rand:.1f} ({summary['train']})")
    keys = ("train", "knn_top1", "random_init_knn_top1", "steps", "wall_s", "pairs_per_s",
            "export")  # fmt: skip
    line = {"what": "pretrain", **{k: summary.get(k) for k in keys}}
    line["already_finished"] = bool(summary.get("already_finished"))
    print(report.json_line(line))


if __name__ == "__main__":
    cli.run(main)
