"""ResNet v1 and v1.5 (18, 34, 50, 101, 152) in Gluon.

v1.5 moves the stride of a downsampling bottleneck from its first 1x1
convolution to its 3x3 convolution (torchvision's ResNet, NVIDIA's RN50
v1.5); basic blocks (18/34) are the same in both. Convolutions have no bias
(each is followed by BatchNorm), so resnet50_v1.5 with 1000 classes has
25,557,032 trainable parameters. Global average pooling makes any input size
work (progressive resizing, rectangular validation). BatchNorm keeps float32
parameters under ``cast('float16')`` (Gluon's BatchNorm.cast does that).
"""
from __future__ import annotations

from mxnet.gluon import nn

from ...models import register

# layers per stage, block kind
DEPTHS = {18: ([2, 2, 2, 2], "basic"), 34: ([3, 4, 6, 3], "basic"), 50: ([3, 4, 6, 3], "bottleneck"),
          101: ([3, 4, 23, 3], "bottleneck"), 152: ([3, 8, 36, 3], "bottleneck")}
STAGE_WIDTHS = [64, 128, 256, 512]   # channels of each stage's 3x3 convolutions


# Every layer is given its input channels, so every parameter has its shape
# at construction: no deferred initialisation, no forward pass needed before
# weights are loaded or shared through a distributed kvstore.
def _conv(channels: int, kernel: int, stride: int, layout: str, in_channels: int) -> nn.Conv2D:
    return nn.Conv2D(channels, kernel, strides=stride, padding=kernel // 2, use_bias=False, layout=layout,
                     in_channels=in_channels)


def _bn(layout: str, channels: int, zero_gamma: bool = False) -> nn.BatchNorm:
    return nn.BatchNorm(axis=1 if layout == "NCHW" else 3, in_channels=channels,
                        gamma_initializer="zeros" if zero_gamma else "ones")


class _Block(nn.HybridBlock):
    """One residual block: body(x) + shortcut(x), then ReLU."""

    def __init__(self, kind: str, width: int, stride: int, in_channels: int, v1_5: bool,
                 layout: str, init_bn0: bool, **kwargs):
        super().__init__(**kwargs)
        out_channels = width * (4 if kind == "bottleneck" else 1)
        with self.name_scope():
            self.body = nn.HybridSequential(prefix="body_")
            with self.body.name_scope():
                if kind == "basic":
                    self.body.add(_conv(width, 3, stride, layout, in_channels), _bn(layout, width),
                                  nn.Activation("relu"),
                                  _conv(width, 3, 1, layout, width), _bn(layout, width, zero_gamma=init_bn0))
                else:
                    first_stride, middle_stride = (1, stride) if v1_5 else (stride, 1)
                    self.body.add(_conv(width, 1, first_stride, layout, in_channels), _bn(layout, width),
                                  nn.Activation("relu"),
                                  _conv(width, 3, middle_stride, layout, width), _bn(layout, width),
                                  nn.Activation("relu"),
                                  _conv(out_channels, 1, 1, layout, width),
                                  _bn(layout, out_channels, zero_gamma=init_bn0))
            self.shortcut = None
            if stride != 1 or in_channels != out_channels:
                self.shortcut = nn.HybridSequential(prefix="down_")
                with self.shortcut.name_scope():
                    self.shortcut.add(_conv(out_channels, 1, stride, layout, in_channels), _bn(layout, out_channels))

    def hybrid_forward(self, F, x):
        identity = self.shortcut(x) if self.shortcut is not None else x
        return F.Activation(self.body(x) + identity, act_type="relu")


class ResNet(nn.HybridBlock):
    def __init__(self, depth: int, v1_5: bool = True, classes: int = 1000, layout: str = "NCHW",
                 init_bn0: bool = False, **kwargs):
        super().__init__(**kwargs)
        layers, kind = DEPTHS[depth]
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            self.features.add(_conv(64, 7, 2, layout, 3), _bn(layout, 64), nn.Activation("relu"),
                              nn.MaxPool2D(3, 2, 1, layout=layout))
            in_channels = 64
            for stage, (count, width) in enumerate(zip(layers, STAGE_WIDTHS)):
                blocks = nn.HybridSequential(prefix=f"stage{stage + 1}_")
                with blocks.name_scope():
                    for index in range(count):
                        stride = 2 if index == 0 and stage > 0 else 1
                        blocks.add(_Block(kind, width, stride, in_channels, v1_5, layout, init_bn0,
                                          prefix=f"block{index}_"))
                        in_channels = width * (4 if kind == "bottleneck" else 1)
                self.features.add(blocks)
            self.features.add(nn.GlobalAvgPool2D(layout=layout), nn.Flatten())
            self.output = nn.Dense(classes, in_units=in_channels)

    def hybrid_forward(self, F, x):
        return self.output(self.features(x))


def _factory(depth: int, v1_5: bool):
    def build(classes: int = 1000, layout: str = "NCHW", init_bn0: bool = False):
        name = f"resnet{depth}_v1{'.5' if v1_5 else ''}"
        # A fixed prefix keeps parameter names stable across processes and
        # across several models in one process (checkpoints load by name).
        return ResNet(depth, v1_5=v1_5, classes=classes, layout=layout, init_bn0=init_bn0,
                      prefix=name.replace(".", "") + "_")
    return build


for _depth in DEPTHS:
    register(f"resnet{_depth}_v1")(_factory(_depth, v1_5=False))
    register(f"resnet{_depth}_v1.5")(_factory(_depth, v1_5=True))
