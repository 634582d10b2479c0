"""Max, average and adaptive pooling act on each channel separately; so do torchvision's
``roi_align`` and ``roi_pool`` (detection heads: each box's window of each channel is pooled).

Grouping rule: output channel i is input channel i; the channel axis must be axis 1 of a batched
``[N, C, *spatial]`` tensor (pooling over channels is not this rule's case). For the RoI ops the
output's axis 0 holds the boxes instead of the images. The position-sensitive variants
(``ps_roi_align``), which read a different channel per bin, are not this rule's case.
"""
from __future__ import annotations

_KINDS = ("max_pool", "avg_pool", "lp_pool", "adaptive_avg_pool", "adaptive_max_pool")
NAMES = tuple(f"{k}{d}d" for k in _KINDS for d in (1, 2, 3)) + tuple(
    f"{k}{d}d_with_indices" for k in ("max_pool", "adaptive_max_pool") for d in (1, 2, 3)) + ("roi_align", "roi_pool")


def rule(b, op) -> bool:
    s = b.get(op.inputs[0]) if op.inputs else None
    if s is None or s.cdim != 1 or len(op.inputs[0].shape) < 3:
        return False
    for out in op.outputs:
        if len(out.shape) != len(op.inputs[0].shape) or out.shape[1] != op.inputs[0].shape[1]:
            return False
    for out in op.outputs:
        b.set(out, s)
    b.memory([op.inputs[0], *op.outputs])
    return True
