"""``F.linear`` and ``F.conv1d/2d/3d`` called by a layer with its own parameters.

Layers that override ``forward`` but compute exactly their base layer (timm's ``Linear``, which
calls ``F.linear(x, self.weight, self.bias)``; its ``Conv2dSame``, which pads the input and then
calls ``F.conv2d`` with its own weight) are not taken for the base layer by their class: their
forward is recorded op by op, and this rule recognises the call inside it.

Grouping rule: the same as the layer rules (:mod:`.linear`, :mod:`.conv`), with the module that owns
the call's ``weight`` as the layer. It applies only when provably that layer's own product: ``weight``
and ``bias`` are the module's own parameters (the very objects: a weight computed from the parameter,
such as timm's weight-standardized ``StdConv2d``, is not), the module is a ``nn.Linear`` or a
(non-transposed) ``nn.ConvNd`` of the call's dimension, and the call's stride, dilation and groups are
the module's. Narrowing keeps the module's class (see ``resize``), so its own forward still runs.
"""
from __future__ import annotations

from types import SimpleNamespace

from torch import nn

from .conv import conv
from .linear import linear

NAMES = ("linear", "conv1d", "conv2d", "conv3d")

_CONV = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _tuple(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def rule(b, op) -> bool:
    names = ("input", "weight", "bias") if op.name == "linear" else _CONV_ARGS
    args = dict(zip(names, op.inputs))
    args.update({k: v for k, v in op.kwargs.items() if k in names})
    weight = args.get("weight")
    if not isinstance(weight, nn.Parameter) or len(op.outputs) != 1:
        return False
    name, module = b.weight_owner(weight)
    if module is None or args.get("bias") is not module.bias:
        return False
    if op.name == "linear":
        if not isinstance(module, nn.Linear):
            return False
    else:
        if not isinstance(module, _CONV[op.name]):
            return False
        n = len(module.kernel_size)
        if (_tuple(args.get("stride", 1), n) != tuple(module.stride) or
                _tuple(args.get("dilation", 1), n) != tuple(module.dilation) or args.get("groups", 1) != module.groups):
            return False
    layer = SimpleNamespace(module=module, module_name=name, inputs=[args["input"]], outputs=op.outputs)
    return (linear if op.name == "linear" else conv)(b, layer)
