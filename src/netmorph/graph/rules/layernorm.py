"""``nn.LayerNorm`` (and ``F.layer_norm``) normalizes over the trailing axes it is given.

Grouping rule: if the channel axis is not among them (a LayerNorm over space), each channel is
normalized on its own: output channel i is input channel i. If it is (the usual LayerNorm over the
embedding of a transformer, the last axis only), output channel i is still input channel i -- the
norm's weight and bias entries i are members of channel i, resized with it -- but every channel's
output depends on the mean and variance of all of them: removing a channel, even one that is zero
for every token, changes the others. Those channels are **approximate**: changeable (regularized,
resized by ``apply_structure`` and ``expand``) but removed by ``prune`` only when asked
(``approximate=True``), which then reports the output change. The norm must be a module's own:
``nn.LayerNorm`` recorded whole, or ``F.layer_norm`` called with a module's own ``weight`` and
``bias`` and its ``normalized_shape`` (timm's ``LayerNorm``); a functional call without a module,
or over several axes including the channel axis, declines and its channels are frozen.

The gates pass through: a channel whose producers are zero is not constant after a LayerNorm
(``-mean / std`` varies by token), but its removal is reported approximate in any case.
"""
from __future__ import annotations

import numpy as np
from torch import nn

from ..builder import Slots

NAMES = ("layer_norm",)


def module_rule(b, op) -> bool:
    """``nn.LayerNorm`` recorded as one op."""
    m = op.module
    x = op.inputs[0] if op.inputs else None
    return _norm(b, x, op.outputs, tuple(m.normalized_shape), op.module_name, m)


def rule(b, op) -> bool:
    """``F.layer_norm(x, normalized_shape, weight, bias, eps)``."""
    args = dict(zip(("input", "normalized_shape", "weight", "bias", "eps"), op.inputs))
    args.update(op.kwargs)
    shape = args.get("normalized_shape")
    name, module = b.weight_owner(args.get("weight")) if isinstance(args.get("weight"), nn.Parameter) else (None, None)
    if module is not None and (args.get("bias") is not getattr(module, "bias", None) or
                               tuple(getattr(module, "normalized_shape", ())) != _shape(shape)):
        name, module = None, None
    return _norm(b, args.get("input"), op.outputs, shape, name, module)


def _shape(shape) -> tuple:
    return (shape,) if isinstance(shape, int) else tuple(shape) if shape is not None else ()


def _norm(b, x, outputs, shape, name, module) -> bool:
    s = b.get(x)
    if s is None or shape is None or len(outputs) != 1:
        return False
    n = len(_shape(shape))
    if s.cdim < len(x.shape) - n:                       # over space: channels apart
        b.set(outputs[0], s)
        b.memory([x, outputs[0]])
        return True
    if module is None or n != 1 or s.cdim != len(x.shape) - 1:
        return False
    normalize_channels(b, name, x, outputs[0], s)
    b.approximate(s.elems, f"normalized by LayerNorm '{name}': its mean and variance are taken over every channel, "
                           "so removing one changes the others")
    return True


def normalize_channels(b, name: str, x, out, s: Slots) -> None:
    """Record the norm module ``name`` over the channel axis of ``x`` (slots ``s``): its per-channel
    parameters are members of x's channels (tied to those of its first call when called again), and
    ``out`` carries the same channels and weight gates (no BatchNorm gate)."""
    if name in b.bns:
        b.tie(b.bns[name], s.elems)
    else:
        b.bns[name] = s.elems
    b.set(out, Slots(s.cdim, s.elems, np.zeros(len(s.elems), dtype=bool), s.gate_w, None))
    b.memory([x, out])
