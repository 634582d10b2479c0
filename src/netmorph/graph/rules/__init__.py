"""One small rule per op kind: how an op ties, creates or freezes channels.

A rule is a function ``rule(builder, op) -> bool``. It reads the channel axes of the op's inputs
(``builder.get``), gives its outputs theirs (``builder.set``), ties elements that must change
together, records FLOPs pieces and activation memory, and returns True. A rule that finds its op
outside what it can prove sound returns False *before changing anything*; the op is then handled
by :func:`unknown.freeze_op`, which freezes every channel it touches.
"""
from __future__ import annotations

from torch import nn

from .. import removed as _removed
from ..record import is_conv1d, is_frozen_batchnorm, is_rms_module
from . import (attention, batchnorm, binary, cat, conv, conv_transpose, embedding, factory, frozen_batchnorm, functional_layer,
               functional_norm, groupnorm, layernorm, linear, matmul, parameter, permute, pointwise, pool, reduce, removed,
               repeat, resample, reshape, rmsnorm, setitem, split, unknown, where)

LAYER_RULES = {
    nn.Conv1d: conv.conv, nn.Conv2d: conv.conv, nn.Conv3d: conv.conv,
    nn.Linear: linear.linear,
    nn.BatchNorm1d: batchnorm.batchnorm, nn.BatchNorm2d: batchnorm.batchnorm,
    nn.BatchNorm3d: batchnorm.batchnorm,
    nn.InstanceNorm1d: batchnorm.batchnorm, nn.InstanceNorm2d: batchnorm.batchnorm,
    nn.InstanceNorm3d: batchnorm.batchnorm, nn.GroupNorm: groupnorm.groupnorm,
    nn.ConvTranspose1d: conv_transpose.conv_transpose, nn.ConvTranspose2d: conv_transpose.conv_transpose,
    nn.ConvTranspose3d: conv_transpose.conv_transpose,
    nn.LayerNorm: layernorm.module_rule, nn.RMSNorm: rmsnorm.module_rule, nn.Embedding: embedding.module_rule,
    _removed.Vanished: removed.vanished, _removed.ConstantOutput: removed.constant,
}

FUNCTION_RULES = {}
for _module in (attention, binary, cat, embedding, factory, functional_layer, functional_norm, layernorm, matmul, permute,
                pointwise, pool, reduce, repeat, resample, reshape, rmsnorm, setitem, split, where):
    for _name in _module.NAMES:
        FUNCTION_RULES[_name] = _module.rule


def apply(builder, op) -> None:
    """Apply the op's rule, or freeze what it touches when there is none or it declines. Parameters
    the op reads as tensors are tracked first (:mod:`.parameter`)."""
    op = parameter.track_parameters(builder, op)
    if op.module is None:
        rule = FUNCTION_RULES.get(op.name)
    else:
        rule = LAYER_RULES.get(type(op.module)) or \
            (frozen_batchnorm.frozen_batchnorm if is_frozen_batchnorm(op.module) else None) or \
            (linear.conv1d if is_conv1d(op.module) else None) or \
            (rmsnorm.module_rule if is_rms_module(op.module) else None)
    if rule is None or not rule(builder, op):
        unknown.freeze_op(builder, op, "no rule for this op" if rule is None else "outside what the rule can prove safe")
    builder.track_ancestors(op)


def supported_ops() -> list[str]:
    """Names of the function ops and layer types that have a rule."""
    return sorted(FUNCTION_RULES) + sorted([t.__name__ for t in LAYER_RULES] + ["FrozenBatchNorm2d"])
