"""Networks: a MobileNetV2-style inverted-residual net sized for 48x48 faces, and
``keras.applications`` MobileNets for transfer learning.

Both take raw face pixels (0..255) and fold normalisation into the graph, so the
int8 model's input is the face crop itself.

Why a custom stack: a stock stride-32 MobileNet turns a 48x48 face into a 2x2
map after discarding most spatial detail in its first two strides, and its
BatchNorm momentum of 0.999 leaves the moving statistics far behind the weights
in the few thousand steps a CPU can afford. ``fernet`` strides once to 24x24,
ends on 3x3, and uses momentum 0.9.
"""

from __future__ import annotations

import keras
from keras import layers

# (block kind, expansion, out channels, repeats, first stride) per stage.
# "fused" is a fused-MBConv (3x3 conv expand + 1x1 project, as in EfficientNetV2
# and EfficientNet-EdgeTPU): on CPUs and the Edge TPU a regular 3x3 conv at high
# resolution is much faster than expand + depthwise, for the same accuracy.
FERNET_STAGES: tuple[tuple[str, int, int, int, int], ...] = (
    ("fused", 2, 24, 2, 1),  # 24x24
    ("fused", 2, 48, 2, 2),  # 12x12
    ("mbconv", 4, 96, 3, 2),  # 6x6
    ("mbconv", 6, 160, 2, 2),  # 3x3
)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn(x, filters: int, kernel: int, stride: int, momentum: float, name: str, act: bool = True):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if act else x


def _inverted_residual(x, expansion: int, filters: int, stride: int, momentum: float, name: str):
    in_ch = x.shape[-1]
    y = x
    if expansion != 1:
        y = _conv_bn(y, in_ch * expansion, 1, 1, momentum, f"{name}_expand")
    y = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(y)
    y = layers.BatchNormalization(momentum=momentum, name=f"{name}_dw_bn")(y)
    y = layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
    y = _conv_bn(y, filters, 1, 1, momentum, f"{name}_project", act=False)
    if stride == 1 and in_ch == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def _fused(x, expansion: int, filters: int, stride: int, momentum: float, name: str):
    in_ch = x.shape[-1]
    y = _conv_bn(x, in_ch * expansion, 3, stride, momentum, f"{name}_expand")
    y = _conv_bn(y, filters, 1, 1, momentum, f"{name}_project", act=False)
    if stride == 1 and in_ch == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def build_fernet(
    input_size: int = 48,
    channels: int = 1,
    num_classes: int = 7,
    width: float = 1.0,
    dropout: float = 0.3,
    bn_momentum: float = 0.9,
    head_channels: int = 384,
) -> keras.Model:
    inp = keras.Input((input_size, input_size, channels), name="face")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(inp)
    x = _conv_bn(x, _make_divisible(24 * width), 3, 2, bn_momentum, "stem")
    block = 0
    for kind, expansion, filters, repeats, stride in FERNET_STAGES:
        make = _fused if kind == "fused" else _inverted_residual
        for i in range(repeats):
            x = make(x, expansion, _make_divisible(filters * width), stride if i == 0 else 1, bn_momentum, f"block{block}")
            block += 1
    x = _conv_bn(x, _make_divisible(head_channels * max(1.0, width)), 1, 1, bn_momentum, "head")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    out = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name=f"fernet_w{width:g}")


APPLICATIONS = {
    "mobilenetv2": "MobileNetV2",
    "mobilenetv3small": "MobileNetV3Small",
    "mobilenetv3large": "MobileNetV3Large",
}


def build_application(
    arch: str,
    input_size: int,
    channels: int = 1,
    num_classes: int = 7,
    width: float = 1.0,
    weights: str | None = None,
    dropout: float = 0.3,
) -> tuple[keras.Model, keras.Model]:
    """A ``keras.applications`` backbone for transfer learning; returns (model, backbone).

    Gray faces are repeated to three channels inside the graph so ImageNet
    weights see the input layout they were trained on; MobileNets expect [-1, 1].
    """
    cls = getattr(keras.applications, APPLICATIONS[arch])
    kwargs = {"include_top": False, "input_shape": (input_size, input_size, 3), "alpha": width, "pooling": "avg"}
    if arch.startswith("mobilenetv3"):
        # V3 carries its own rescaling layer unless told not to; we normalise ourselves.
        kwargs["include_preprocessing"] = False
    weight_file = None
    if weights in (None, "none", ""):
        kwargs["weights"] = None
    elif weights == "imagenet":
        kwargs["weights"] = "imagenet"
    else:
        kwargs["weights"] = None
        weight_file = weights
    backbone = cls(**kwargs)
    if weight_file is not None:
        backbone.load_weights(weight_file)
    inp = keras.Input((input_size, input_size, channels), name="face")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(inp)
    if channels == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    x = backbone(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    out = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name=f"{arch}_a{width:g}"), backbone


def freeze_batchnorm(model: keras.Model) -> None:
    """Fine-tuning keeps BatchNorm in inference mode so small batches do not wreck its statistics."""
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
