"""The authors' PyTorch SimSiam with its own module names, for the checkpoint conversion tests.

torchvision's ResNet written out in plain torch (torchvision is not installed here):
`BasicBlock`, `Bottleneck` (v1.5, stride on the 3x3 conv), `_make_layer`'s downsample rule,
`zero_init_residual`; plus a `width` multiplier (rounded as `simsiam_keras.backbones` rounds it)
and the CIFAR stem (3x3 stride-1 conv, no max-pool). `SimSiam` is facebookresearch/simsiam's
`simsiam/builder.py`, with `projector_layers=2` for the CIFAR variant of App. D. The `save_*`
helpers write what `main_simsiam.py`, `main_lincls.py` and `torch.save(model.state_dict())`
write, and `lincls_load_pretrained` is `main_lincls.py`'s `--pretrained` loading.
"""

import torch
from torch import nn


def _channels(base, width):
    return max(8, int(round(base * width)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.ResNet, with `width` and `cifar_stem`."""

    def __init__(
        self, block, layers, num_classes=1000, zero_init_residual=False, width=1.0, cifar_stem=False
    ):
        super().__init__()
        self.inplanes = _channels(64, width)
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, self.inplanes, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, _channels(64, width), layers[0])
        self.layer2 = self._make_layer(block, _channels(128, width), layers[1], 2)
        self.layer3 = self._make_layer(block, _channels(256, width), layers[2], 2)
        self.layer4 = self._make_layer(block, _channels(512, width), layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x):
        """The pooled features (what the Keras backbone returns)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x):
        return self.fc(self.features(x))


_ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), False),
    "resnet18_cifar": (BasicBlock, (2, 2, 2, 2), True),
    "resnet34": (BasicBlock, (3, 4, 6, 3), False),
    "resnet50": (Bottleneck, (3, 4, 6, 3), False),
}


def resnet(arch, width=1.0, **kwargs):
    """`torchvision.models.<arch>(**kwargs)` at `width`; "resnet18_cifar" has the CIFAR stem."""
    block, layers, cifar = _ARCHS[arch]
    return ResNet(block, layers, width=width, cifar_stem=cifar, **kwargs)


class SimSiam(nn.Module):
    """simsiam/builder.py's SimSiam over `resnet(arch, width)`."""

    def __init__(self, arch, width=1.0, dim=2048, pred_dim=512, projector_layers=3):
        super().__init__()
        self.encoder = resnet(arch, width, num_classes=dim, zero_init_residual=True)
        prev_dim = self.encoder.fc.weight.shape[1]
        self.encoder.fc.bias.requires_grad = False  # not use bias as followed by BN
        hidden = []
        for _ in range(projector_layers - 1):
            hidden += [
                nn.Linear(prev_dim, prev_dim, bias=False),
                nn.BatchNorm1d(prev_dim),
                nn.ReLU(inplace=True),
            ]
        self.encoder.fc = nn.Sequential(*hidden, self.encoder.fc, nn.BatchNorm1d(dim, affine=False))
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),
            nn.Linear(pred_dim, dim),
        )

    def forward(self, x1, x2):
        z1, z2 = self.encoder(x1), self.encoder(x2)
        return self.predictor(z1), self.predictor(z2), z1.detach(), z2.detach()


def randomize(module, seed=0):
    """Random BN affine parameters and running statistics, and random Linear biases.

    Convolutions and Linear weights keep their (random) initialisation. The zero-init gammas
    (`zero_init_residual`) become small nonzero ones, so that every residual branch counts
    while the features stay of order 1-10, as in a trained network.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.affine:
                    low, high = (0.1, 0.3) if not m.weight.any() else (0.5, 1.5)
                    m.weight.uniform_(low, high, generator=g)
                    m.bias.normal_(0.0, 0.2, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=g)))
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.normal_(0.0, 0.5, generator=g)
    return module


def _sgd_state(module):
    """An SGD optimizer's state dict with momentum buffers, as the scripts save it."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.0, momentum=0.9)
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # lr 0: creates the momentum buffers, changes nothing
    module.zero_grad(set_to_none=True)
    return optimizer.state_dict()


def _ddp(state_dict):
    return {f"module.{k}": v for k, v in state_dict.items()}


def save_main_simsiam(model, path, arch, epoch=100):
    """What main_simsiam.py writes: DistributedDataParallel(SimSiam)'s state dict and more."""
    torch.save(
        {
            "epoch": epoch,
            "arch": arch,
            "state_dict": _ddp(model.state_dict()),
            "optimizer": _sgd_state(model),
        },
        path,
    )
    return path


def save_main_lincls(model, path, arch, epoch=90):
    """What main_lincls.py writes: DistributedDataParallel(ResNet)'s state dict and more."""
    torch.save(
        {
            "epoch": epoch,
            "arch": arch,
            "state_dict": _ddp(model.state_dict()),
            "best_acc1": torch.tensor(12.5),
            "optimizer": _sgd_state(model),
        },
        path,
    )
    return path


def save_state_dict(model, path):
    """`torch.save(model.state_dict(), path)`: a plain torchvision checkpoint."""
    torch.save(model.state_dict(), path)
    return path


def lincls_load_pretrained(model, path):
    """main_lincls.py's `--pretrained` loading into `model` (a ResNet); returns its message."""
    checkpoint = torch.load(path, map_location="cpu")
    state_dict = checkpoint["state_dict"]
    for k in list(state_dict.keys()):
        # retain only encoder up to before the embedding layer
        if k.startswith("module.encoder") and not k.startswith("module.encoder.fc"):
            state_dict[k[len("module.encoder.") :]] = state_dict[k]
        del state_dict[k]
    msg = model.load_state_dict(state_dict, strict=False)
    assert set(msg.missing_keys) == {"fc.weight", "fc.bias"}
    return msg
