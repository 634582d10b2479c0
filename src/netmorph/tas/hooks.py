"""The forward hooks through which ``TAS`` rewrites a module's output (see :mod:`.model`).

Rule, per hooked module, in order: for each block whose branch ends here, ``m * out + (1 - m) * k``
(``m = P(block reached)``, ``k`` what the branch emits once removed: the BatchNorm applied to zeros,
in its current train / eval mode, or 0 without a BatchNorm); for each width distribution of a group
made here, :func:`.cwi.mix_widths` over the group's channels (in group order); for each group only
read here (a BatchNorm after a concat), zero its channels beyond the widest sampled candidate.
"""
from __future__ import annotations

import torch
from torch import nn

from .cwi import mix_widths

_BN = nn.modules.batchnorm._BatchNorm


def _removed_output(module: nn.Module, out: torch.Tensor) -> torch.Tensor | float:
    """What ``module`` emits (broadcastable to ``out``) once its input is all zeros."""
    if not isinstance(module, _BN):
        return 0.0
    shape = (1, -1) + (1,) * (out.dim() - 2)
    bias = module.bias if module.bias is not None else out.new_zeros(out.shape[1])
    if module.training or module.running_mean is None:
        return bias.reshape(shape)
    weight = module.weight if module.weight is not None else torch.ones_like(bias)
    return (bias - weight * module.running_mean / torch.sqrt(module.running_var + module.eps)).reshape(shape)


def output_hook(ops, widths, depths):
    """A forward hook applying ``ops`` (from ``TAS``) with this forward's sampled ``widths`` and ``depths``."""
    def hook(module, args, out):
        for op in ops:
            if op[0] == "depth":
                m = depths[op[1]][op[2]].to(out.dtype)
                out = m * out + (1 - m) * _removed_output(module, out)
                continue
            kind, i, pos, dim = op
            dim = dim % out.dim()
            cands, weight = widths[i]
            if kind == "mask":
                gone = pos[max(cands):].to(out.device)
                out = out.index_fill(dim, gone, 0.0) if len(gone) else out
                continue
            weight = weight.to(out.dtype)
            if len(pos) == out.shape[dim] and bool((pos == torch.arange(len(pos))).all()):
                out = mix_widths(out, cands, weight, dim)
            else:
                pos = pos.to(out.device)
                out = out.index_copy(dim, pos, mix_widths(out.index_select(dim, pos), cands, weight, dim))
        return out
    return hook
