"""PyTorch ResNets weight-compatible with the Gluon ones (engines/mxnet/resnet.py,
engines/mxnet/resnet9.py): ``get_torch_model(name, classes, init_bn0)`` for every
name of the Gluon registry.

Weight compatibility. Each network registers its parameters and BatchNorm
buffers in the order Gluon's ``collect_params()`` lists them (a block's body,
then its shortcut; the classifier last), with the same shapes: convolution
weights OIHW, the classifier's (classes, features), BatchNorm gamma/beta as
``weight``/``bias`` and running_mean/running_var as buffers. So the two
state lists pair up position by position, and models/convert.py computes the
name mapping from that order instead of a table typed by hand. ResNets use
torchvision's key names (conv1, bn1, layer1.0.conv2, downsample, fc); ResNet9
uses cifar10-fast's stage names (prep, layer1..3, res1, res3).

Same arithmetic: v1.5 strides the 3x3 convolution of a downsampling
bottleneck, v1 its first 1x1; basic blocks (18, 34) are the same in both; a
block gets a 1x1 convolution + BatchNorm shortcut when its stride is not 1 or
its channel count changes; global average pooling (ResNet9: global max
pooling, logits x 0.125); convolutions without bias. The tests compare
logits of both engines on the same weights.

Same initialisation rules (not the same values: the two frameworks draw from
different generators): convolution and linear weights He normal, fan-in
(std sqrt(2 / fan_in), as Gluon's Xavier(gaussian, in, magnitude 2));
linear bias 0; BatchNorm gamma 1, beta 0, running mean 0, variance 1; with
``init_bn0`` the last BatchNorm of each residual block starts with gamma 0
(ResNet9 ignores ``init_bn0``, as its Gluon version does).

BatchNorm: eps 1e-5 and running = 0.9 * running + 0.1 * batch in both
(MXNet momentum 0.9 is torch momentum 0.1). One difference nn.BatchNorm2d
cannot remove: the batch variance folded into running_var. PyTorch uses the
unbiased one (divided by m - 1, m = values per channel, N*H*W) and updates
in the forward pass. MXNet 1.9.1 on CPU (oneDNN and its own kernel alike,
measured) uses the biased one (divided by m) and updates in the backward
pass. On GPUs MXNet calls cuDNN's cudnnBatchNormalizationForwardTraining,
which updates in the forward pass like PyTorch. The difference is a factor
m / (m - 1) on the batch's 0.1 share: 1.0006 for batch 32 at 7x7, the
smallest maps of ResNet50 at 224 px.

Weight decay: ``no_weight_decay_names`` lists what Gluon's ``--no-bn-wd``
exempts (gamma, beta, bias: every BatchNorm parameter and every bias).

This module imports torch, never mxnet (engines/ rule).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ...cli import UsageError

# Layers per stage and block kind; the same table as engines/mxnet/resnet.py (which
# this module cannot import: it imports mxnet). A test checks both agree.
DEPTHS = {18: ([2, 2, 2, 2], "basic"), 34: ([3, 4, 6, 3], "basic"), 50: ([3, 4, 6, 3], "bottleneck"),
          101: ([3, 4, 23, 3], "bottleneck"), 152: ([3, 8, 36, 3], "bottleneck")}
STAGE_WIDTHS = [64, 128, 256, 512]   # channels of each stage's 3x3 convolutions
RESNET9_OUTPUT_SCALE = 0.125         # cifar10-fast's logit multiplier
# MXNet BatchNorm defaults: running = 0.9 * running + 0.1 * batch; torch's momentum is the batch's share.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> Optional[nn.Sequential]:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(_conv(in_channels, out_channels, 1, stride), _bn(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; the same in v1 and v1.5."""
    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, v1_5: bool):
        super().__init__()
        self.conv1, self.bn1 = _conv(in_channels, width, 3, stride), _bn(width)
        self.conv2, self.bn2 = _conv(width, width, 3), _bn(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, width, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels); v1.5 strides the 3x3, v1 the first 1x1."""
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, v1_5: bool):
        super().__init__()
        out_channels = width * self.expansion
        first_stride, middle_stride = (1, stride) if v1_5 else (stride, 1)
        self.conv1, self.bn1 = _conv(in_channels, width, 1, first_stride), _bn(width)
        self.conv2, self.bn2 = _conv(width, width, 3, middle_stride), _bn(width)
        self.conv3, self.bn3 = _conv(width, out_channels, 1), _bn(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    def __init__(self, depth: int, v1_5: bool, classes: int):
        super().__init__()
        layers, kind = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1, self.bn1 = _conv(3, 64, 7, 2), _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for stage, (count, width) in enumerate(zip(layers, STAGE_WIDTHS)):
            blocks = []
            for index in range(count):
                stride = 2 if index == 0 and stage > 0 else 1
                blocks.append(block(in_channels, width, stride, v1_5))
                in_channels = width * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(in_channels, classes)

    def residual_blocks(self) -> List[nn.Module]:
        return [b for stage in (self.layer1, self.layer2, self.layer3, self.layer4) for b in stage]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ConvBN(nn.Module):
    """3x3 convolution, BatchNorm, ReLU: ResNet9's unit."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv, self.bn = _conv(in_channels, out_channels, 3), _bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu(self.bn(self.conv(x)), inplace=True)


class Residual(nn.Module):
    """x + two ConvBNs (no ReLU after the sum, as cifar10-fast)."""

    def __init__(self, channels: int):
        super().__init__()
        self.res1, self.res2 = ConvBN(channels, channels), ConvBN(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


class ResNet9(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.prep = ConvBN(3, 64)
        self.layer1 = nn.Sequential(ConvBN(64, 128), nn.MaxPool2d(2))
        self.res1 = Residual(128)
        self.layer2 = nn.Sequential(ConvBN(128, 256), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(ConvBN(256, 512), nn.MaxPool2d(2))
        self.res3 = Residual(512)
        self.fc = nn.Linear(512, classes, bias=False)

    def residual_blocks(self) -> List[nn.Module]:
        return []   # no block-final BatchNorm to zero (cifar10-fast's recipe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res3(self.layer3(self.layer2(self.res1(self.layer1(self.prep(x))))))
        return self.fc(torch.amax(x, dim=(2, 3))) * RESNET9_OUTPUT_SCALE


def _architectures() -> Dict[str, Tuple]:
    """Registry name -> (constructor, its arguments besides classes)."""
    table = {"resnet9": (ResNet9, ())}
    for depth in DEPTHS:
        table[f"resnet{depth}_v1"] = (ResNet, (depth, False))
        table[f"resnet{depth}_v1.5"] = (ResNet, (depth, True))
    return table


def model_names() -> List[str]:
    return sorted(_architectures())


def get_torch_model(name: str, classes: int, init_bn0: bool, channels_last: bool = False) -> nn.Module:
    """The PyTorch twin of the Gluon model ``name``, initialised by the same
    rules from torch's global generator (seed it with torch.manual_seed).
    ``channels_last``: parameters in channels-last memory format (feed it
    channels-last batches); state_dict shapes stay OIHW either way."""
    table = _architectures()
    if name not in table:
        raise UsageError(f"unknown model {name!r} (choose from {', '.join(sorted(table))})")
    constructor, arguments = table[name]
    model = constructor(*arguments, classes=classes)
    _initialise(model, init_bn0)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _initialise(model: nn.Module, init_bn0: bool) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            # std sqrt(2 / fan_in), fan_in = input channels x kernel area: Gluon's Xavier(gaussian, in, 2)
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()   # gamma 1, beta 0, mean 0, variance 1
    if init_bn0:
        for block in model.residual_blocks():
            nn.init.zeros_(block.last_bn().weight)


def no_weight_decay_names(model: nn.Module) -> List[str]:
    """Names of the parameters Gluon's ``--no-bn-wd`` exempts from weight
    decay (its pattern .*gamma|.*beta|.*bias): every BatchNorm weight and
    bias, and every other bias; in named_parameters order."""
    exempt = set()
    for prefix, module in model.named_modules():
        for local, _ in module.named_parameters(recurse=False):
            if isinstance(module, nn.modules.batchnorm._BatchNorm) or local == "bias":
                exempt.add(f"{prefix}.{local}" if prefix else local)
    return [name for name, _ in model.named_parameters() if name in exempt]


def parameter_groups(model: nn.Module, weight_decay: float, bn_wd: bool) -> List[dict]:
    """Optimizer parameter groups: ``weight_decay`` for all, or (bn_wd False)
    0 for the parameters no_weight_decay_names lists."""
    if bn_wd:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    exempt = set(no_weight_decay_names(model))
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n not in exempt], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0}]
