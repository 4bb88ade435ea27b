r"""SimSiam pretraining (paper Sec. 4; App. D for CIFAR).

  python scripts/pretrain.py --flagfile configs/quickstart.cfg  # offline, embedded digits
  python scripts/pretrain.py --flagfile configs/in1k.cfg      # workdir runs/in1k
  python scripts/pretrain.py --flagfile configs/cifar10.cfg --epochs 200
  python scripts/pretrain.py --train_dir ~/images --val_dir ~/val --image_size 224

The defaults are the paper's ImageNet recipe, which a flagfile and the flags after it override
(simsiam_keras/config.py); configs/quickstart.cfg runs offline on the embedded digits in a few
minutes on 2 CPU cores (pretrain, print the kNN accuracy of the pretrained encoder beside a
random-init one, export the backbone). The workdir defaults to runs/<flagfile name>
(runs/default without one). Running the same command again resumes
from the workdir's last checkpoint; on a finished run it prints the summary and changes
nothing. Ctrl-C (or SIGTERM) saves a checkpoint after the current step and exits with
130 (143). The last printed line is one JSON object (the summary also written to
WORKDIR/summary.json).
"""

from simsiam_keras import commands

if __name__ == "__main__":
    commands.pretrain()  # simsiam_keras/commands.py: flags from the config, then apps.pretrain.run
