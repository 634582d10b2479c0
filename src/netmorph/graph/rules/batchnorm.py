"""BatchNorm1d/2d/3d (and InstanceNorm) normalize each channel on its own.

Grouping rule: output channel i is input channel i; the BN's channel i is a member of that channel,
and its ``|gamma_i|`` is the channel's source of aliveness for the Gamma regularizers. A BN called
again ties its channels to those of its first call. After an affine BN a channel is gated for the
Gamma family (gamma = 0 makes it the constant beta); the weight-norm gate passes through (a zero
input becomes a constant).
"""
from __future__ import annotations

import numpy as np

from ..builder import Slots


def batchnorm(b, op) -> bool:
    m = op.module
    x = op.inputs[0] if op.inputs else None
    s = b.get(x)
    n = getattr(m, "num_features", getattr(m, "num_channels", None))
    if s is None or s.cdim != 1 or len(op.outputs) != 1 or x.shape[1] != n:
        return False
    name = op.module_name
    if register_norm(b, name, x, s) and m.affine:
        b.bn_sources.extend((name, i, e) for i, e in enumerate(s.elems.tolist()))
    gate_bn = np.ones(len(s.elems), dtype=bool) if m.affine else s.gate_bn
    b.set(op.outputs[0], Slots(1, s.elems, gate_bn, s.gate_w, s.source))
    b.memory([x, op.outputs[0]])
    return True


def register_norm(b, name: str, x, s: Slots) -> bool:
    """Record the per-channel norm ``name`` reading ``x`` (slots ``s``): it follows the layer that made
    ``x``, and its channels are members of x's (tied to those of its first call when called again).
    Returns whether this is its first call."""
    if x.id in b.producer:
        b.follows.setdefault(b.producer[x.id], name)
    if name in b.bns:
        b.tie(b.bns[name], s.elems)
        return False
    b.bns[name] = s.elems
    return True
