r"""A PyTorch SimSiam from the paper's recipe: the peer for side-by-side speed and quality.

Not part of the library: it runs in its own environment (torch + torchvision, no Keras), and
every comparison in docs/ runs it on the same machine, in the same session, as this
project's command. The model, loss, optimiser and views follow docs/recipe.md, written the way
the authors' public code writes them (torchvision ResNets, `transforms.RandomResizedCrop`,
`ColorJitter`, PIL's Gaussian blur).

    python3 -m venv ~/torchref
    ~/torchref/bin/pip install torch==2.14.1 torchvision==0.29.1 pillow

    ~/torchref/bin/python benchmarks/torch_reference.py step --arch resnet18_cifar --batch 128
    ~/torchref/bin/python benchmarks/torch_reference.py pipeline --data DIR --size 224 --batch 64
    ~/torchref/bin/python benchmarks/torch_reference.py train --data TRAIN --knn-train TRAIN \
        --knn-val VAL --epochs 4 --width 0.25

`step`: image pairs per second of one SGD step on random inputs (median of `--steps` steps after
`--warmup`), `--device cuda` and `--bf16` (autocast) for the GPU check (benchmarks/gpu_check.sh),
with the model's training FLOPs counted by `torch.utils.flop_counter`.
`views`: statistics of the views of a folder's first `--images` images (channel means and
stds, grayscale fraction, crop area and aspect quantiles), as `benchmarks/benchmark.py views`.
`pipeline`: two-view pairs per second out of a DataLoader over an image folder
(`<class>/<image>`), `--workers` processes. `train`: the CIFAR recipe (App. D: resnet18_cifar,
2-layer projector, lr 0.03 x batch/256, weight decay 5e-4, cosine, no blur) on the first
`--per-class` images of each class, channels scaled by `--width`: the kNN top-1 (k=200, T=0.2)
on `--knn-val` of the random-init backbone (built and recomputed BN statistics), then per epoch
the mean loss, z_std, the effective ranks of a 512-image probe and the kNN top-1 (every
`--knn-every` epochs); `--no-stopgrad` is the Fig. 2 ablation. Each prints JSON lines.
"""

import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

# The recipe's numbers and rules are plain Python (no Keras): the same module as the package's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from simsiam_keras.recipe import projector_layers_for  # noqa: E402

try:
    import torchvision
    from PIL import ImageFilter
    from torchvision import transforms
except ImportError:  # `step` of the narrow CIFAR net needs torch alone (the GPU check's CPU test)
    torchvision = transforms = ImageFilter = None

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block, its last BN starting at zero (zero-init residual)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.b2.weight)
        if stride == 1 and cin == cout:
            self.short = nn.Identity()
        else:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(y)) + self.short(x))


class NarrowCifarResNet18(nn.Module):
    """ResNet-18, CIFAR variant (3x3 stride-1 stem, no max-pool), channels x `width`."""

    def __init__(self, width):
        super().__init__()
        channels = [max(8, int(round(64 * width * m))) for m in (1, 2, 4, 8)]
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        )
        blocks, cin = [], channels[0]
        for stage, cout in enumerate(channels):
            blocks += [BasicBlock(cin, cout, 1 if stage == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.dim = cin

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)


def build_backbone(arch, width=1.0):
    """`(backbone, feature_dim)`: torchvision's ResNets, or the CIFAR variant of ResNet-18."""
    if arch == "resnet18_cifar" and width != 1.0:
        net = NarrowCifarResNet18(width)
        return net, net.dim
    if arch == "resnet18_cifar":
        net = torchvision.models.resnet18(zero_init_residual=True)
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    else:
        net = getattr(torchvision.models, arch)(zero_init_residual=True)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


class SimSiam(nn.Module):
    """Encoder (backbone + projector) and predictor, as in the paper's App. A and D."""

    def __init__(self, arch, dim=2048, pred_dim=512, projector_layers=3, width=1.0):
        super().__init__()
        self.backbone, features = build_backbone(arch, width)
        layers, width_in = [], features
        for _ in range(projector_layers - 1):
            layers += [
                nn.Linear(width_in, features, bias=False),
                nn.BatchNorm1d(features),
                nn.ReLU(inplace=True),
            ]
            width_in = features
        layers += [nn.Linear(width_in, dim, bias=False), nn.BatchNorm1d(dim, affine=False)]
        self.projector = nn.Sequential(*layers)
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),
            nn.Linear(pred_dim, dim),
        )

    def forward(self, x1, x2):
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        return self.predictor(z1), self.predictor(z2), z1.detach(), z2.detach()


def simsiam_loss(p1, p2, z1, z2):
    """L = D(p1, z2) / 2 + D(p2, z1) / 2 with D the negative cosine similarity."""
    d12 = F.cosine_similarity(p1, z2, dim=-1).mean()
    d21 = F.cosine_similarity(p2, z1, dim=-1).mean()
    return -(d12 + d21) * 0.5


class RandomBlur:
    """PIL Gaussian blur with a radius ~ U(0.1, 2), as the official code's GaussianBlur."""

    def __call__(self, image):
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class TwoViews:
    """Applies one transform twice to the same image: the two views."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return [self.transform(image), self.transform(image)]


def view_transform(size, blur=True):
    """The paper's view recipe (docs/recipe.md) in torchvision."""
    steps = [
        transforms.RandomResizedCrop(size, scale=(0.2, 1.0)),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
    ]
    if blur:
        steps.append(transforms.RandomApply([RandomBlur()], p=0.5))
    steps += [
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    return transforms.Compose(steps)


def first_per_class(root, per_class, transform):
    """An ImageFolder, cut to its first `per_class` images of each class (0: all)."""
    folder = torchvision.datasets.ImageFolder(root, transform)
    if not per_class:
        return folder
    counts, keep = {}, []
    for index, (_, label) in enumerate(folder.samples):
        if counts.get(label, 0) < per_class:
            counts[label] = counts.get(label, 0) + 1
            keep.append(index)
    return torch.utils.data.Subset(folder, keep)


def two_view_loader(root, per_class, size, blur, batch, workers):
    """Shuffled batches of `[view1, view2]` of a folder, the last partial batch dropped."""
    views = first_per_class(root, per_class, TwoViews(view_transform(size, blur)))
    return torch.utils.data.DataLoader(
        views,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )


def train_flops_per_pair(model, x1, x2):
    """3 x the forward FLOPs of one pair (both views, f and h), counted by PyTorch.

    `torch.utils.flop_counter` counts what runs (2 per multiply-add, convolutions and matrix
    products); x3 for forward + backward is the convention `simsiam_keras.flops` uses too.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x1[:2], x2[:2])
    return 3 * counter.get_total_flops() / 2


def sync(device):
    """Waits for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def cmd_step(args):
    """Pairs per second of SGD steps on random inputs (median of per-step times)."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = SimSiam(args.arch, projector_layers=projector_layers_for(args.arch), width=args.width)
    model = model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.05 * args.batch / 256, momentum=0.9, weight_decay=1e-4
    )
    x1 = torch.randn(args.batch, 3, args.size, args.size, device=device)
    x2 = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x1, x2 = (x.contiguous(memory_format=torch.channels_last) for x in (x1, x2))
    flops = train_flops_per_pair(model, x1, x2)
    model.train()
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=args.bf16)

    def step():
        with autocast:
            loss = simsiam_loss(*model(x1, x2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    sync(device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    pairs_per_s = args.batch / median
    result = {
        "what": "torch_step",
        "arch": args.arch,
        "size": args.size,
        "batch": args.batch,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "bf16": args.bf16,
        "channels_last": args.channels_last,
        "threads": torch.get_num_threads(),
        "median_step_s": median,
        "img_per_s": pairs_per_s,
        "train_gflop_per_pair": flops / 1e9,
        "achieved_tflops": flops * pairs_per_s / 1e12,
    }
    if args.nominal_tflops:
        result["utilisation_of_nominal"] = result["achieved_tflops"] / args.nominal_tflops
    print(json.dumps(result))


def cmd_pipeline(args):
    """Two-view pairs per second out of the DataLoader."""
    loader = two_view_loader(args.data, 0, args.size, not args.no_blur, args.batch, args.workers)
    batches = iter(loader)
    for _ in range(args.warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(batches)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "what": "torch_pipeline",
                "size": args.size,
                "batch": args.batch,
                "workers": args.workers,
                "two_view_img_per_s": args.batch * args.batches / seconds,
            }
        )
    )


def cmd_views(args):
    """Statistics of the views of the first `--images` images of a folder (sorted order)."""
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    steps = view_transform(args.size, not args.no_blur).transforms[:-1]  # not normalised
    transform = transforms.Compose(steps)
    folder = torchvision.datasets.ImageFolder(args.data)
    v1, v2, areas, aspects = [], [], [], []
    for path, _ in folder.samples[: args.images]:
        image = folder.loader(path)
        v1.append(transform(image).numpy())
        v2.append(transform(image).numpy())
        top, left, h, w = transforms.RandomResizedCrop.get_params(image, (0.2, 1.0), (3 / 4, 4 / 3))
        areas.append(h * w / (image.width * image.height))
        aspects.append(w / h)
    from view_stats import view_statistics  # benchmarks/view_stats.py, shared with ours

    stats = view_statistics(v1, v2, areas, aspects)
    print(json.dumps({"what": "torch_views", "images": len(v1), "size": args.size, **stats}))


@torch.no_grad()
def eval_features(backbone, root, per_class, size, batch=512):
    """L2-normalised features of the evaluation view (resize, centre crop) and the labels."""
    transform = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    loader = torch.utils.data.DataLoader(
        first_per_class(root, per_class, transform), batch_size=batch, num_workers=1
    )
    backbone.eval()
    features, labels = [], []
    for images, y in loader:
        features.append(F.normalize(backbone(images), dim=1))
        labels.append(y)
    return torch.cat(features), torch.cat(labels)


def knn_top1(backbone, args, k=200, temperature=0.2):
    """Weighted kNN top-1 (InstDisc): the k most similar training features vote exp(sim/T)."""
    train_x, train_y = eval_features(backbone, args.knn_train, args.knn_train_per_class, args.size)
    val_x, val_y = eval_features(backbone, args.knn_val, 0, args.size)
    classes = int(train_y.max()) + 1
    correct = 0
    for start in range(0, len(val_x), 1000):
        weights, index = (val_x[start : start + 1000] @ train_x.T).topk(min(k, len(train_x)), dim=1)
        votes = torch.zeros(len(weights), classes).scatter_add_(
            1, train_y[index], (weights / temperature).exp()
        )
        correct += (votes.argmax(1) == val_y[start : start + 1000]).sum().item()
    return 100.0 * correct / len(val_x)


@torch.no_grad()
def recalibrated(backbone, args, batches=20, batch=256):
    """A copy of `backbone` with BN statistics recomputed on the kNN memory ("precise BN").

    The running statistics average `batches` training-mode batches of the memory in order, as
    `simsiam_keras.knn.recalibrated_copy` does.
    """
    import copy as copying

    copy = copying.deepcopy(backbone)
    norms = [m for m in copy.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average of the batch statistics
    transform = transforms.Compose(
        [
            transforms.Resize(args.size),
            transforms.CenterCrop(args.size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    loader = torch.utils.data.DataLoader(
        first_per_class(args.knn_train, args.knn_train_per_class, transform), batch_size=batch
    )
    copy.train()
    for i, (images, _) in enumerate(loader):
        if i == batches:
            break
        copy(images)
    return copy


def effective_rank(x):
    """RankMe: exp of the entropy of the normalised singular values (`losses.effective_rank`)."""
    sigma = torch.linalg.svdvals(x.double())
    p = sigma / sigma.sum() + 1e-7
    return torch.exp(-(p * p.log()).sum()).item()


@torch.no_grad()
def probe_ranks(model, probe):
    """`(feature_rank, z_rank)` of the probe images in eval mode."""
    model.eval()
    features = model.backbone(probe)
    return effective_rank(features), effective_rank(model.projector(features))


def cmd_train(args):
    """The CIFAR recipe at a CPU budget: per epoch loss, z_std, ranks and kNN top-1."""
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = SimSiam(args.arch, projector_layers=projector_layers_for(args.arch), width=args.width)
    init_knn = knn_top1(model.backbone, args)
    init_knn_recalibrated = knn_top1(recalibrated(model.backbone, args), args)
    print(
        json.dumps(
            {"knn_top1_init": init_knn, "knn_top1_init_recalibrated": init_knn_recalibrated}
        ),
        flush=True,
    )
    eval_view = transforms.Compose(
        [
            transforms.Resize(args.size),
            transforms.CenterCrop(args.size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    probe_set = first_per_class(args.data, args.per_class, eval_view)
    keep = torch.randperm(len(probe_set), generator=torch.Generator().manual_seed(0))[:512]
    probe = torch.stack([probe_set[int(i)][0] for i in keep])
    loader = two_view_loader(
        args.data, args.per_class, args.size, args.blur, args.batch, args.workers
    )
    peak_lr = args.base_lr * args.batch / 256
    predictor = list(model.predictor.parameters())
    encoder = [p for p in model.parameters() if all(p is not q for q in predictor)]
    groups = [  # the official main_simsiam.py's groups: `fix_lr` keeps the predictor's lr
        {"params": encoder, "fix_lr": False},
        {"params": predictor, "fix_lr": args.fix_pred_lr},
    ]
    optimizer = torch.optim.SGD(groups, lr=peak_lr, momentum=0.9, weight_decay=args.wd)
    start, steps, train_s = time.perf_counter(), 0, 0.0
    for epoch in range(args.epochs):
        for group in optimizer.param_groups:  # cosine per epoch, as the official code
            if not group["fix_lr"]:
                group["lr"] = peak_lr * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
        model.train()
        losses, epoch_start = [], time.perf_counter()
        for (x1, x2), _ in loader:
            p1, p2, z1, z2 = model(x1, x2)
            if args.no_stopgrad:
                z1 = model.projector(model.backbone(x1))
                z2 = model.projector(model.backbone(x2))
            loss = simsiam_loss(p1, p2, z1, z2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            steps += 1
        train_s += time.perf_counter() - epoch_start
        z_std = F.normalize(z1.detach(), dim=1).std(0).mean().item()
        row = {"epoch": epoch + 1, "loss": sum(losses) / len(losses), "z_std": z_std}
        row["feature_rank"], row["z_rank"] = probe_ranks(model, probe)
        if args.knn_every and ((epoch + 1) % args.knn_every == 0 or epoch + 1 == args.epochs):
            row["knn_top1"] = knn_top1(model.backbone, args)
        print(json.dumps(row), flush=True)
    print(
        json.dumps(
            {
                "what": "torch_train",
                "arch": args.arch,
                "width": args.width,
                "size": args.size,
                "epochs": args.epochs,
                "per_class": args.per_class,
                "batch": args.batch,
                "base_lr": args.base_lr,
                "wd": args.wd,
                "seed": args.seed,
                "no_stopgrad": args.no_stopgrad,
                "fix_pred_lr": args.fix_pred_lr,
                "knn_top1_init": init_knn,
                "knn_top1_init_recalibrated": init_knn_recalibrated,
                "knn_top1": knn_top1(model.backbone, args),
                "z_std": z_std,
                "train_s": train_s,
                "wall_s": time.perf_counter() - start,
                "pairs_per_s": steps * args.batch / train_s,
            }
        )
    )


def main():
    """Parses the command line and runs one command."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    step = commands.add_parser("step")
    step.add_argument("--arch", default="resnet18_cifar")
    step.add_argument("--size", type=int, default=32)
    step.add_argument("--batch", type=int, default=128)
    step.add_argument("--steps", type=int, default=10)
    step.add_argument("--warmup", type=int, default=2)
    step.add_argument("--channels-last", action="store_true")
    step.add_argument("--width", type=float, default=1.0)
    step.add_argument("--device", default="cpu", help="cpu, cuda")
    step.add_argument("--bf16", action="store_true", help="torch.autocast to bfloat16")
    step.add_argument("--nominal-tflops", type=float, help="rated peak for the utilisation")
    pipeline = commands.add_parser("pipeline")
    pipeline.add_argument("--data", required=True)
    pipeline.add_argument("--size", type=int, default=224)
    pipeline.add_argument("--batch", type=int, default=64)
    pipeline.add_argument("--batches", type=int, default=20)
    pipeline.add_argument("--warmup", type=int, default=2)
    pipeline.add_argument("--workers", type=int, default=2)
    pipeline.add_argument("--no-blur", action="store_true")
    views = commands.add_parser("views")
    views.add_argument("--data", required=True)
    views.add_argument("--size", type=int, default=32)
    views.add_argument("--images", type=int, default=2000)
    views.add_argument("--no-blur", action="store_true")
    views.add_argument("--seed", type=int, default=0)
    train = commands.add_parser("train")
    train.add_argument("--data", required=True)
    train.add_argument("--per-class", type=int, default=1000)
    train.add_argument("--knn-train", required=True)
    train.add_argument("--knn-train-per-class", type=int, default=1000)
    train.add_argument("--knn-val", required=True)
    train.add_argument("--arch", default="resnet18_cifar")
    train.add_argument("--width", type=float, default=0.25)
    train.add_argument("--size", type=int, default=32)
    train.add_argument("--batch", type=int, default=256)
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--base-lr", type=float, default=0.03)
    train.add_argument("--wd", type=float, default=5e-4)
    train.add_argument("--workers", type=int, default=1)
    train.add_argument("--blur", action="store_true", help="add the blur (CIFAR: off)")
    train.add_argument("--no-stopgrad", action="store_true")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--fix-pred-lr", action="store_true", help="the predictor keeps the initial lr"
    )
    train.add_argument("--knn-every", type=int, default=1, help="kNN every N epochs (0: end)")
    args = parser.parse_args()
    commands = {"step": cmd_step, "pipeline": cmd_pipeline, "views": cmd_views, "train": cmd_train}
    commands[args.command](args)


if __name__ == "__main__":
    main()
