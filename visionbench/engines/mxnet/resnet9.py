"""ResNet9, the DAWNBench CIFAR-10 network (cifar10-fast):

    prep    conv 64
    layer1  conv 128, max pool 2, residual (conv 128, conv 128)
    layer2  conv 256, max pool 2
    layer3  conv 512, max pool 2, residual (conv 512, conv 512)
    head    global max pool, linear (no bias), output x 0.125

Every conv is 3x3, no bias, followed by BatchNorm and ReLU.
"""
from __future__ import annotations

from mxnet.gluon import nn

from ...models import register

OUTPUT_SCALE = 0.125   # cifar10-fast's logit multiplier


def _conv_bn(channels: int, layout: str, in_channels: int) -> nn.HybridSequential:
    # Input channels given: every parameter has its shape at construction.
    block = nn.HybridSequential(prefix="")
    block.add(nn.Conv2D(channels, 3, padding=1, use_bias=False, layout=layout, in_channels=in_channels),
              nn.BatchNorm(axis=1 if layout == "NCHW" else 3, in_channels=channels), nn.Activation("relu"))
    return block


class _Residual(nn.HybridBlock):
    def __init__(self, channels: int, layout: str, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential(prefix="")
            self.body.add(_conv_bn(channels, layout, channels), _conv_bn(channels, layout, channels))

    def hybrid_forward(self, F, x):
        return x + self.body(x)


class ResNet9(nn.HybridBlock):
    def __init__(self, classes: int = 10, layout: str = "NCHW", **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            self.features.add(_conv_bn(64, layout, 3),
                              _conv_bn(128, layout, 64), nn.MaxPool2D(2, layout=layout), _Residual(128, layout),
                              _conv_bn(256, layout, 128), nn.MaxPool2D(2, layout=layout),
                              _conv_bn(512, layout, 256), nn.MaxPool2D(2, layout=layout), _Residual(512, layout),
                              nn.GlobalMaxPool2D(layout=layout), nn.Flatten())
            self.output = nn.Dense(classes, in_units=512, use_bias=False)

    def hybrid_forward(self, F, x):
        return self.output(self.features(x)) * OUTPUT_SCALE


@register("resnet9")
def resnet9(classes: int = 10, layout: str = "NCHW", init_bn0: bool = False):
    # init_bn0 is accepted for a uniform interface; ResNet9's residuals have
    # no final BatchNorm to zero in cifar10-fast's recipe, so it is ignored.
    return ResNet9(classes=classes, layout=layout, prefix="resnet9_")
