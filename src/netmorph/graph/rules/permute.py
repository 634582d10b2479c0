"""``permute``, ``transpose``/``swapaxes`` and ``movedim`` move the channel axis, nothing else.

Grouping rule: output channel i is input channel i; the channel axis goes where the permutation
sends it (``[B, C, N]`` -> ``[B, N, C]`` for a token layout, ``NCHW`` -> ``NHWC``).
"""
from __future__ import annotations

NAMES = ("permute", "transpose", "swapaxes", "swapdims", "movedim")


def _dims(args) -> list:
    return list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else list(args)


def rule(b, op) -> bool:
    x = op.inputs[0] if op.inputs else None
    s = b.get(x)
    if s is None or len(op.outputs) != 1:
        return False
    nd = len(x.shape)
    args = _dims(op.inputs[1:]) or [op.kwargs.get(k) for k in ("dims", "dim0", "dim1", "source", "destination")
                                      if k in op.kwargs]
    if op.name == "permute":
        order = [d % nd for d in _dims(args)]
    elif op.name == "movedim":
        src, dst = args[0] % nd, args[1] % nd
        order = [d for d in range(nd) if d != src]
        order.insert(dst, src)
    else:
        a, c = args[0] % nd, args[1] % nd
        order = list(range(nd))
        order[a], order[c] = order[c], order[a]
    b.set(op.outputs[0], s.with_cdim(order.index(s.cdim)))
    return True
