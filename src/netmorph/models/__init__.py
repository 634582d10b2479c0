"""Reference networks used by the netmorph CLI, tests and benchmarks.

Each network exercises a graph pattern the width-learning code must handle:

=============  ==========================================  ===========
name           pattern                                      input
=============  ==========================================  ===========
resnet20/56    residual add, projection shortcut, reused     3x32x32
               ReLU module
mobilenetv2    depthwise conv, inverted residual, ReLU6      3x32x32
vgg11          ``x.view(B, -1)`` flatten of a 2x2 map        3x32x32
inception      multi-branch ``torch.cat``                    3x32x32
densenet       dense concatenation                           3x32x32
senet          squeeze-excitation broadcast multiply         3x32x32
tiny           small conv chain + residual block             Cx8x8
=============  ==========================================  ===========

Use :func:`get_model` to build one by name.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch.nn as nn

from .densenet import DenseNet, densenet_net
from .inception import InceptionNet, inception_net
from .mobilenetv2 import MobileNetV2, mobilenetv2
from .resnet import BasicBlock, CifarResNet, cifar_resnet, resnet20, resnet56
from .senet import SENet, se_net
from .tiny import TinyCNN, tiny_cnn
from .vgg import VGG, vgg11

MODELS: Dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet56": resnet56,
    "mobilenetv2": mobilenetv2,
    "vgg11": vgg11,
    "inception": inception_net,
    "densenet": densenet_net,
    "senet": se_net,
    "tiny": tiny_cnn,
}


def get_model(name: str, **kwargs) -> nn.Module:
    """Build the reference network registered as ``name``.

    Keyword arguments (e.g. ``num_classes``, ``width``) are passed to the
    constructor. Raises ``ValueError`` for an unknown name.
    """
    try:
        constructor = MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None
    return constructor(**kwargs)


__all__ = [
    "MODELS",
    "get_model",
    "BasicBlock",
    "CifarResNet",
    "cifar_resnet",
    "resnet20",
    "resnet56",
    "MobileNetV2",
    "mobilenetv2",
    "VGG",
    "vgg11",
    "InceptionNet",
    "inception_net",
    "DenseNet",
    "densenet_net",
    "SENet",
    "se_net",
    "TinyCNN",
    "tiny_cnn",
]
