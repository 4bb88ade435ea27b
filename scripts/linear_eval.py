r"""Linear evaluation of a pretrained backbone (paper Sec. 4, App. A; official main_lincls.py).

  python scripts/linear_eval.py --flagfile configs/in1k_linear.cfg --pretrained WORKDIR
  python scripts/linear_eval.py --flagfile configs/cifar10_linear.cfg --pretrained model.keras
  python scripts/linear_eval.py --flagfile configs/quickstart_linear.cfg  # the quickstart's model

The backbone is frozen and in inference mode. Two protocols for the linear layer on its pooled
features (`--protocol`; "auto" picks "features" up to 200,000 training images, else "official"):
"official" trains it with LARS (or `--optimizer sgd`) on augmented views, top-1 / top-5 on the
validation split every epoch (ImageNet: configs/in1k_linear.cfg); "features" extracts the
features once and fits the same layer exactly by L-BFGS (`linear.fit_on_features`), where
LARS's small steps would not get anywhere in a small run. At the end, the check that no
backbone weight or BN statistic changed. The defaults are the paper's. Writes `linear_eval.json` and
`linear_eval.png` into `--workdir`; the last printed line is one JSON object.

At ImageNet scale: `--strategy` and `--mixed_precision` as in pretraining (the linear layer
stays float32); the official protocol checkpoints every `--checkpoint_every` steps into
`WORKDIR/linear_eval/run-<key>/` and the same command, rerun after a crash or Ctrl-C, resumes
at the exact batch (simsiam_keras/linear_official.py).
"""

from simsiam_keras import commands

if __name__ == "__main__":
    commands.linear_eval()  # simsiam_keras/commands.py: flags, then apps.linear_eval.run
