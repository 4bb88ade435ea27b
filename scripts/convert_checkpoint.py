r"""Checkpoints of the official PyTorch code (facebookresearch/simsiam) <-> Keras `.keras` files.

  python scripts/convert_checkpoint.py --from_torch checkpoint_0099.pth.tar --output model.keras
  python scripts/convert_checkpoint.py --from_torch model_best.pth.tar --output lincls.keras
  python scripts/convert_checkpoint.py --from_torch resnet50.pth --output backbone.keras
  python scripts/convert_checkpoint.py --to_torch runs/in1k --output simsiam.pth.tar

--from_torch reads main_simsiam.py's checkpoint (-> SimSiam), main_lincls.py's (->
LinearClassifier) or a torchvision ResNet state dict (-> backbone; its fc is ignored), with
torch.load(weights_only=True); the architecture (resnet18, resnet50, resnet18_cifar, width,
heads) comes from the tensor shapes. --to_torch writes a .keras SimSiam, LinearClassifier or
backbone (or a pretraining workdir's model.keras) in main_simsiam.py's layout, which
main_lincls.py --pretrained loads. An existing --output is kept unless --overwrite is given.
Needs PyTorch (pip install -e ".[torch]"). The last printed line is one JSON object (what,
direction, input, output, kind, arch, width, ...). See docs/convert.md.
"""

from simsiam_keras import commands

if __name__ == "__main__":
    commands.convert()  # simsiam_keras/commands.py: flags, then convert.from_torch / to_torch
