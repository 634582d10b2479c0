"""Spatial ``mean`` and ``sum`` keep channels apart; so does ``softmax`` along another axis.

Grouping rule: output channel i is input channel i when the reduced axes do not include the channel
axis (global average pooling written as ``x.mean((2, 3))``, with or without ``keepdim``; attention
scores ``[B, heads, L, S]`` normalized by ``softmax(dim=-1)``: a constant channel stays constant).
Reducing or normalizing over the channel axis, or over every axis, mixes channels: the rule declines.
"""
from __future__ import annotations

NAMES = ("mean", "sum", "amax", "amin", "softmax", "log_softmax")


def rule(b, op) -> bool:
    x = op.inputs[0] if op.inputs else None
    s = b.get(x)
    dims = op.inputs[1] if len(op.inputs) > 1 else op.kwargs.get("dim")
    if s is None or dims is None or len(op.outputs) != 1:
        return False
    nd = len(x.shape)
    if op.name in ("softmax", "log_softmax"):
        if not isinstance(dims, int) or dims % nd == s.cdim or op.outputs[0].shape != x.shape:
            return False
        b.set(op.outputs[0], s)
        b.memory([x, op.outputs[0]])
        return True
    dims = [d % nd for d in ((dims,) if isinstance(dims, int) else dims)]
    if s.cdim in dims:
        return False
    keepdim = op.inputs[2] if len(op.inputs) > 2 else op.kwargs.get("keepdim", False)
    cdim = s.cdim if keepdim else s.cdim - sum(1 for d in dims if d < s.cdim)
    b.set(op.outputs[0], s.with_cdim(cdim))
    b.memory([x, op.outputs[0]])
    return True
