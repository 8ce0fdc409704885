"""Hand-written reference math for the tests, following the official implementations' semantics
(../shared/notes/official-implementations.md): split-and-concatenate IBN, the official SwitchNorm
formula, an official-style IBN ResNet-50 and an official-style DenseNet-IBN-a, both with the fixed 7x7
average pool."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def ibn_reference(x, w_in, b_in, bn_weight, bn_bias, half, eps=1e-5, running=None, training=True, momentum=0.1):
    """IN (affine, instance statistics) on channels [0, half), BN on the rest."""
    a, b = x[:, :half], x[:, half:]
    mean = a.mean((2, 3), keepdim=True)
    var = a.var((2, 3), unbiased=False, keepdim=True)
    ya = (a - mean) / torch.sqrt(var + eps) * w_in[None, :, None, None] + b_in[None, :, None, None]
    if training:
        bm = b.mean((0, 2, 3))
        bv = b.var((0, 2, 3), unbiased=False)
        if running is not None:
            n = b.numel() / b.shape[1]
            running[0].mul_(1 - momentum).add_(momentum * bm.detach())
            running[1].mul_(1 - momentum).add_(momentum * bv.detach() * n / (n - 1))
    else:
        bm, bv = running
    yb = (b - bm[None, :, None, None]) / torch.sqrt(bv[None, :, None, None] + eps)
    yb = yb * bn_weight[None, :, None, None] + bn_bias[None, :, None, None]
    return torch.cat([ya, yb], 1)


def sn_reference(x, weight, bias, mean_weight, var_weight, running_mean, running_var, training=True,
                 official_momentum=0.9, using_bn=True, moving_average=True, eps=1e-5):
    """The official SwitchNorm2d forward: unbiased IN variance, LN/BN from E[x^2], official momentum."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, -1)
    mean_in = x.mean(-1, keepdim=True)
    var_in = x.var(-1, keepdim=True)
    mean_ln = mean_in.mean(1, keepdim=True)
    temp = var_in + mean_in ** 2
    var_ln = temp.mean(1, keepdim=True) - mean_ln ** 2
    mw = torch.softmax(mean_weight, 0)
    vw = torch.softmax(var_weight, 0)
    mean = mw[0] * mean_in + mw[1] * mean_ln
    var = vw[0] * var_in + vw[1] * var_ln
    if using_bn:
        if training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = temp.mean(0, keepdim=True) - mean_bn ** 2
            if moving_average:
                running_mean.mul_(official_momentum).add_((1 - official_momentum) * mean_bn.detach())
                running_var.mul_(official_momentum).add_((1 - official_momentum) * var_bn.detach())
        else:
            mean_bn, var_bn = running_mean, running_var
        mean = mean + mw[2] * mean_bn
        var = var + vw[2] * var_bn
    x = (x - mean) / (var + eps).sqrt()
    return x.view(n, c, h, w) * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)


class RefIBN(nn.Module):
    def __init__(self, planes, ratio=0.5):
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x):
        a, b = torch.split(x, self.half, 1)
        return torch.cat((self.IN(a.contiguous()), self.BN(b.contiguous())), 1)


class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, ibn=None, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = RefIBN(planes) if ibn == "a" else nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.IN = nn.InstanceNorm2d(planes * 4, affine=True) if ibn == "b" else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out)) + residual
        if self.IN is not None:
            out = self.IN(out)
        return self.relu(out)


class RefResNetIBN(nn.Module):
    """Official-style ResNet-50-IBN: ibn_cfg per group, IBN-b's IN only in each group's last block."""

    def __init__(self, ibn_cfg=("a", "a", "a", None), layers=(3, 4, 6, 3), num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.InstanceNorm2d(64, affine=True) if ibn_cfg[0] == "b" else nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make(64, layers[0], 1, ibn_cfg[0])
        self.layer2 = self._make(128, layers[1], 2, ibn_cfg[1])
        self.layer3 = self._make(256, layers[2], 2, ibn_cfg[2])
        self.layer4 = self._make(512, layers[3], 2, ibn_cfg[3])
        self.avgpool = nn.AvgPool2d(7)
        self.fc = nn.Linear(2048, num_classes)

    def _make(self, planes, blocks, stride, ibn):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [RefBottleneck(self.inplanes, planes, None if ibn == "b" else ibn, stride, downsample)]
        self.inplanes = planes * 4
        for i in range(1, blocks):
            layers.append(RefBottleneck(self.inplanes, planes, None if (ibn == "b" and i < blocks - 1) else ibn))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))



class RefBNFirstIBN(nn.Module):
    """The official DenseNet-IBN's IBN: BN on the first int(C * (1 - ratio)) channels, IN on the others."""

    def __init__(self, planes, ratio):
        super().__init__()
        self.split = int(planes * (1 - ratio))
        self.BN = nn.BatchNorm2d(self.split)
        self.IN = nn.InstanceNorm2d(planes - self.split, affine=True)

    def forward(self, x):
        head, tail = x[:, :self.split].contiguous(), x[:, self.split:].contiguous()
        return torch.cat((self.BN(head), self.IN(tail)), 1)


class RefDenseLayer(nn.Sequential):
    """norm1 (IBN or BN), relu1, conv1 (1x1 to 4k), norm2, relu2, conv2 (3x3 to k); output: input ++ new."""

    def __init__(self, channels, growth, use_ibn):
        super().__init__(OrderedDict(
            norm1=RefBNFirstIBN(channels, 0.4) if use_ibn else nn.BatchNorm2d(channels),
            relu1=nn.ReLU(inplace=True),
            conv1=nn.Conv2d(channels, 4 * growth, 1, bias=False),
            norm2=nn.BatchNorm2d(4 * growth),
            relu2=nn.ReLU(inplace=True),
            conv2=nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        ))

    def forward(self, x):
        return torch.cat((x, super().forward(x)), 1)


class RefDenseNetIBN(nn.Module):
    """Official-style DenseNet-BC-IBN-a: IBN as norm1 of dense layers 1, 4, 7, ... of blocks 1-3 (none with
    ``ibn=False``), transitions halve the channels, ReLU after norm5, then a fixed 7x7 average pool."""

    def __init__(self, blocks=(6, 12, 24, 16), growth=32, ibn=True, num_classes=1000):
        super().__init__()
        width = 2 * growth
        parts = OrderedDict(conv0=nn.Conv2d(3, width, 7, 2, 3, bias=False), norm0=nn.BatchNorm2d(width),
                            relu0=nn.ReLU(inplace=True), pool0=nn.MaxPool2d(3, 2, 1))
        for b, count in enumerate(blocks, start=1):
            layers = OrderedDict()
            for j in range(count):
                layers[f"denselayer{j + 1}"] = RefDenseLayer(width + j * growth, growth, ibn and b < 4 and j % 3 == 0)
            parts[f"denseblock{b}"] = nn.Sequential(layers)
            width += count * growth
            if b < len(blocks):
                parts[f"transition{b}"] = nn.Sequential(OrderedDict(
                    norm=nn.BatchNorm2d(width), relu=nn.ReLU(inplace=True),
                    conv=nn.Conv2d(width, width // 2, 1, bias=False), pool=nn.AvgPool2d(2, 2)))
                width //= 2
        parts["norm5"] = nn.BatchNorm2d(width)
        self.features = nn.Sequential(parts)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        x = torch.relu(self.features(x))
        return self.classifier(torch.flatten(nn.functional.avg_pool2d(x, 7), 1))


def read_key_list(path):
    """{key: shape} from a ../shared/reference key list."""
    out = {}
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, shape = line.split(" ", 1)
        out[key] = [int(s) for s in shape.strip()[1:-1].split(",") if s]
    return out


def randomize_(model, seed=0):
    """Random weights and running statistics everywhere (so that equivalence tests are not trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                elif name.endswith(("weight",)) and t.dim() == 1:
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * (0.05 if t.dim() > 1 else 0.2))
    return model
