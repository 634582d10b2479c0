"""torchvision's ``FrozenBatchNorm2d`` (detection and segmentation backbones after loading pretrained
weights): ``x * scale + shift`` per channel, from buffers that never train.

Grouping rule: output channel i is input channel i, and the layer's channel i is a member of that
channel (pruning narrows its four buffers). It is no source of aliveness (its weight is a buffer, which
no regularizer can pull to zero). A zero input stays zero only where the channel's shift
``bias - running_mean * scale`` is exactly 0; elsewhere a dead channel would emit a constant that a
zero-padded k x k conv cannot absorb exactly, so such channels count as not provably dead (ungated)
for both regularizer families. Recognised by its exact class (a subclass is recorded op by op).
"""
from __future__ import annotations

import torch

from ..builder import Slots
from .batchnorm import register_norm


def frozen_batchnorm(b, op) -> bool:
    m = op.module
    x = op.inputs[0] if op.inputs else None
    s = b.get(x)
    if s is None or s.cdim != 1 or len(op.outputs) != 1 or len(x.shape) != 4 or x.shape[1] != m.weight.numel():
        return False
    register_norm(b, op.module_name, x, s)
    with torch.no_grad():
        scale = m.weight * (m.running_var + m.eps).rsqrt()
        zero = (m.bias - m.running_mean * scale == 0).cpu().numpy()
    b.set(op.outputs[0], Slots(1, s.elems, s.gate_bn & zero, s.gate_w & zero, s.source))
    b.memory([x, op.outputs[0]])
    return True
