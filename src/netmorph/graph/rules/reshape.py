"""``flatten``, ``view``/``reshape`` that merge dims, ``squeeze`` and ``unsqueeze``.

Grouping rule: no tying. When the channel axis is merged with neighbouring axes (a conv map
flattened into a linear layer's features), the merged axis carries each channel's element once per
position it covers, in memory order, so a linear layer downstream sees exactly which of its inputs
belong to which channel. ``view``/``reshape`` must leave the merged size to PyTorch (``-1``, as in
``x.view(x.size(0), -1)``): a hard-coded size (``view(-1, 4096)``) would break once channels are
removed, so the rule declines and the channels are frozen. Any other reshape also declines.
"""
from __future__ import annotations

import numpy as np

from ..builder import Slots

NAMES = ("flatten", "view", "reshape", "squeeze", "unsqueeze")


def _merge(s: Slots, shape: tuple, start: int, end: int) -> Slots:
    """Slots after merging axes ``start..end`` (inclusive) of ``shape``."""
    if s.cdim < start:
        return s
    if s.cdim > end:
        return s.with_cdim(s.cdim - (end - start))
    inner = int(np.prod(shape[s.cdim + 1:end + 1]))
    size = int(np.prod(shape[start:end + 1]))
    index = (np.arange(size) // inner) % shape[s.cdim]
    return s.take(index).with_cdim(start)


def _merged_span(src: tuple, dst: tuple):
    """(start, end) if ``dst`` is ``src`` with the axes start..end merged into one, else None."""
    if len(dst) > len(src):
        return None
    start = 0
    while start < len(dst) and src[start] == dst[start]:
        start += 1
    k = len(src) - len(dst)
    if start == len(dst):
        start = len(dst) - 1 if dst else 0
    if src[start + k + 1:] != dst[start + 1:] or int(np.prod(src[start:start + k + 1])) != dst[start]:
        return None
    return start, start + k


def _requested_sizes(op) -> list:
    """The sizes passed to ``view``/``reshape``: ``x.view(a, b)``, ``x.view((a, b))`` or ``shape=``."""
    args = list(op.inputs[1:]) or [op.kwargs.get("shape", op.kwargs.get("size", ()))]
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = list(args[0])
    return args


def _moved_cdim(op, src: tuple, dst: tuple, cdim: int):
    """Channel axis after ``squeeze``/``unsqueeze``, or None if the channel axis itself is size 1."""
    if src[cdim] == 1:
        return None
    dims = op.inputs[1] if len(op.inputs) > 1 else op.kwargs.get("dim")
    if op.name == "unsqueeze":
        d = dims % len(dst)
        return cdim + (1 if d <= cdim else 0)
    if dims is None:
        dims = range(len(src))
    dims = [d % len(src) for d in ((dims,) if isinstance(dims, int) else dims)]
    return cdim - sum(1 for d in dims if d < cdim and src[d] == 1)


def rule(b, op) -> bool:
    x = op.inputs[0] if op.inputs else None
    s = b.get(x)
    if s is None or len(op.outputs) != 1:
        return False
    src, dst = tuple(x.shape), tuple(op.outputs[0].shape)
    if op.name in ("squeeze", "unsqueeze"):
        cdim = _moved_cdim(op, src, dst, s.cdim)
        if cdim is None or dst[cdim] != src[s.cdim]:
            return False
        b.set(op.outputs[0], s.with_cdim(cdim))
        return True
    if src == dst:
        b.set(op.outputs[0], s)
        return True
    span = _merged_span(src, dst)
    if span is None:
        return False
    start, end = span
    if op.name in ("view", "reshape") and start <= s.cdim <= end:
        sizes = _requested_sizes(op)
        if len(sizes) != len(dst) or sizes[start] != -1:
            return False
    b.set(op.outputs[0], _merge(s, src, start, end))
    return True
