"""``F.batch_norm``, ``F.instance_norm`` and ``F.group_norm`` called by a module with its own parameters.

Norm layers that override ``forward`` (timm's ``BatchNormAct2d`` and ``GroupNormAct``, which apply
their activation after the functional norm) are not taken for the base layer by their class: their
forward is recorded op by op, and this rule recognises the functional norm inside it.

Grouping rule: the same as the layer rules (:mod:`.batchnorm`, :mod:`.groupnorm`), with the module
that owns the call's ``weight`` as the norm: output channel i is input channel i, that module's
gamma_i is a member of channel i (a source of aliveness), a GroupNorm's groups are tied. It applies
only when provably the module's own norm: ``weight`` (and ``bias``, the running statistics) are that
module's own parameters and buffers, its width attribute (``num_features`` / ``num_channels``, and
``num_groups``) matches the call, and the channels are on axis 1. Otherwise the op is frozen.
"""
from __future__ import annotations

from types import SimpleNamespace

from torch import nn

from .batchnorm import batchnorm
from .groupnorm import groupnorm

NAMES = ("batch_norm", "instance_norm", "group_norm")

_ARGS = {
    "batch_norm": ("input", "running_mean", "running_var", "weight", "bias"),
    "instance_norm": ("input", "running_mean", "running_var", "weight", "bias"),
    "group_norm": ("input", "num_groups", "weight", "bias"),
}


def rule(b, op) -> bool:
    names = _ARGS[op.name]
    args = dict(zip(names, op.inputs))
    args.update({k: v for k, v in op.kwargs.items() if k in names})
    weight = args.get("weight")
    if not isinstance(weight, nn.Parameter) or len(op.outputs) != 1:
        return False
    name, module = b.weight_owner(weight)
    if module is None:
        return False
    if args.get("bias") is not getattr(module, "bias", None):
        return False
    for key in ("running_mean", "running_var"):
        if args.get(key) is not None and args[key] is not getattr(module, key, None):
            return False
    if op.name == "group_norm":
        if getattr(module, "num_groups", None) != args.get("num_groups") or \
                getattr(module, "num_channels", None) != weight.numel():
            return False
    elif getattr(module, "num_features", None) != weight.numel():
        return False
    if not getattr(module, "affine", True):
        return False
    n = weight.numel()           # what the layer rules read of the module (it has a weight: affine)
    shape = SimpleNamespace(num_features=n, num_channels=n, num_groups=args.get("num_groups"), affine=True)
    layer = SimpleNamespace(module=shape, module_name=name, inputs=[args.get("input")], outputs=op.outputs)
    return (groupnorm if op.name == "group_norm" else batchnorm)(b, layer)
