"""Channel-wise interpolation (CWI) and the width mixing of TAS (METHODS.md 2.2).

Rule: ``CWI(x, C') = adaptive_avg_pool3d(x, (C', H, W))`` on an NCHW tensor: channel ``i`` of the
result is the mean of input channels ``floor(i*C/C') .. ceil((i+1)*C/C') - 1``; spatial positions
are untouched. Any layout works: the channel axis is named and every other non-batch axis is kept.

A layer of full width ``C`` whose sampled candidate widths are ``c_k`` with weights ``w_k`` emits
``sum_k w_k * pad(CWI(x[:, :c_k], c_max), C)``: each candidate keeps the *first* ``c_k`` channels
(the ones ``apply_structure(..., keep="first")`` keeps), is aligned to the widest sampled candidate
``c_max`` and zero-padded back to ``C``, so the next layer (which reads all ``C`` channels) sees
zeros where the candidate has no channels.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def cwi(x: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    """Area-interpolate ``x`` along ``dim`` to ``width`` channels (identity when already that wide)."""
    if x.shape[dim] == width:
        return x
    moved = x.movedim(dim, 1)
    n, c = moved.shape[:2]
    rest = moved.shape[2:]
    flat = moved.reshape(n, 1, c, -1)                   # (N, 1, C, H*W): pool C only
    out = F.adaptive_avg_pool2d(flat, (width, flat.shape[-1]))
    return out.reshape(n, width, *rest).movedim(1, dim)


def mix_widths(x: torch.Tensor, widths: Sequence[int], weights: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``sum_k weights[k] * pad(CWI(x[:c_k], max c), C)`` along ``dim`` (C = x.shape[dim])."""
    full = x.shape[dim]
    widest = max(widths)
    out = None
    for k, c in enumerate(widths):
        term = weights[k] * cwi(x.narrow(dim, 0, c), widest, dim)
        out = term if out is None else out + term
    if widest < full:
        shape = list(x.shape)
        shape[dim] = full - widest
        out = torch.cat([out, out.new_zeros(shape)], dim)
    return out
