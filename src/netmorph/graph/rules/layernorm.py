"""``layer_norm`` normalizes over the trailing axes it is given.

Grouping rule: if the channel axis is not among them (a LayerNorm over space), each channel is
normalized on its own: output channel i is input channel i. If it is (the usual LayerNorm over the
embedding of a transformer), every channel's output depends on the statistics of all of them:
removing one would change the others, so the rule declines and the channels are frozen.
"""
from __future__ import annotations

NAMES = ("layer_norm", "rms_norm")


def rule(b, op) -> bool:
    x = op.inputs[0] if op.inputs else None
    s = b.get(x)
    shape = op.inputs[1] if len(op.inputs) > 1 else op.kwargs.get("normalized_shape")
    if s is None or shape is None or len(op.outputs) != 1:
        return False
    n = 1 if isinstance(shape, int) else len(shape)
    if s.cdim >= len(x.shape) - n:
        return False
    b.set(op.outputs[0], s)
    b.memory([x, op.outputs[0]])
    return True
