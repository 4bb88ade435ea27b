"""A plain-PyTorch SimSiam (CIFAR ResNet-18 + 2-layer projector + predictor), for parity tests.

Written from the official code (facebookresearch/simsiam builder.py, torchvision resnet18 with
zero_init_residual) with PyTorch defaults everywhere; modules are keyed by the Keras layer names
so that weights can be copied one to one.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simsiam_keras.convert import KERAS_TO_TORCH


class TorchSimSiamCifar(nn.Module):
    def __init__(self, widths, dim, pred_dim):
        super().__init__()
        m = nn.ModuleDict()
        m["stem_conv"] = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        m["stem_bn"] = nn.BatchNorm2d(widths[0])
        self.blocks = []
        cin = widths[0]
        for s, w in enumerate(widths, start=1):
            for b in (1, 2):
                name, stride = f"stage{s}_block{b}", (2 if s > 1 and b == 1 else 1)
                m[f"{name}_conv1"] = nn.Conv2d(cin, w, 3, stride, 1, bias=False)
                m[f"{name}_bn1"] = nn.BatchNorm2d(w)
                m[f"{name}_conv2"] = nn.Conv2d(w, w, 3, 1, 1, bias=False)
                m[f"{name}_bn2"] = nn.BatchNorm2d(w)
                down = stride != 1 or cin != w
                if down:
                    m[f"{name}_down_conv"] = nn.Conv2d(cin, w, 1, stride, bias=False)
                    m[f"{name}_down_bn"] = nn.BatchNorm2d(w)
                self.blocks.append((name, down))
                cin = w
        feat = cin
        m["projector_dense_1"] = nn.Linear(feat, feat, bias=False)
        m["projector_bn_1"] = nn.BatchNorm1d(feat)
        m["projector_dense_2"] = nn.Linear(feat, dim, bias=False)
        m["projector_bn_2"] = nn.BatchNorm1d(dim, affine=False)
        m["predictor_dense_1"] = nn.Linear(dim, pred_dim, bias=False)
        m["predictor_bn_1"] = nn.BatchNorm1d(pred_dim)
        m["predictor_dense_2"] = nn.Linear(pred_dim, dim)
        self.m = m

    def backbone(self, x):
        m = self.m
        x = F.relu(m["stem_bn"](m["stem_conv"](x)))
        for name, down in self.blocks:
            y = F.relu(m[f"{name}_bn1"](m[f"{name}_conv1"](x)))
            y = m[f"{name}_bn2"](m[f"{name}_conv2"](y))
            short = m[f"{name}_down_bn"](m[f"{name}_down_conv"](x)) if down else x
            x = F.relu(y + short)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def projector(self, h):
        m = self.m
        h = F.relu(m["projector_bn_1"](m["projector_dense_1"](h)))
        return m["projector_bn_2"](m["projector_dense_2"](h))

    def predictor(self, z):
        m = self.m
        return m["predictor_dense_2"](F.relu(m["predictor_bn_1"](m["predictor_dense_1"](z))))

    def forward(self, x1, x2):
        """The official SimSiam forward: returns p1, p2, z1.detach(), z2.detach()."""
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        return self.predictor(z1), self.predictor(z2), z1.detach(), z2.detach()


def official_loss(p1, p2, z1, z2):
    """The official criterion: -(cos(p1, z2).mean() + cos(p2, z1).mean()) * 0.5."""
    return (
        -(F.cosine_similarity(p1, z2, dim=1).mean() + F.cosine_similarity(p2, z1, dim=1).mean())
        * 0.5
    )


def torch_param_for(module, keras_variable):
    """The torch tensor matching a Keras variable, and how to lay the Keras array out like it."""
    layer, attr = keras_variable.path.split("/")[-2:]
    tensor = getattr(module.m[layer], KERAS_TO_TORCH[attr])
    ndim = len(keras_variable.shape)

    def to_torch_layout(a):
        a = np.asarray(a)
        if attr == "kernel" and ndim == 4:
            return a.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        if attr == "kernel" and ndim == 2:
            return a.T  # (in, out) -> (out, in)
        return a

    return tensor, to_torch_layout


def copy_keras_weights(keras_model, module):
    with torch.no_grad():
        for v in keras_model.variables:
            if v.path.split("/")[-1] not in KERAS_TO_TORCH:
                continue
            tensor, layout = torch_param_for(module, v)
            tensor.copy_(torch.from_numpy(layout(np.asarray(v.numpy())).copy()))
