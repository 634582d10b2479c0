"""Differentiable FLOPs of the TAS search space (METHODS.md 2.3).

Rule: the channel graph writes the FLOPs of a network as ``const + sum_p coef_p * in_p * out_p``
over pieces ``p`` (a conv or matrix product between slots of channel groups), where ``in_p`` and
``out_p`` count the piece's alive input and output channels (a grouped / depthwise piece uses its
full output count: it is linear in the width). Giving every channel of group ``g`` the weight
``s_g`` (new width over old width) reproduces the FLOPs of the network with those widths exactly
(this is :func:`netmorph.expand.widths_cost`). TAS sets

    s_g = E[C_g] / C_g,   E[C_g] = sum_k softmax(alpha_g)_k * c_k,

and, for the removable group of block ``j`` of a searched stage and the groups that only feed it,
multiplies ``s_g`` by ``P(depth > j) = sum_{d > j} softmax(beta)_d``: every piece reading or
writing the branch's own channels scales with the probability the block is reached. With one-hot distributions each ``s_g``
is the derived width over the full width (0 for a dropped block), so the value is exactly
``count_flops`` of ``apply_structure(model, tas.derive(), keep="first")``.
"""
from __future__ import annotations

import torch

from ..graph import ChannelGraph


class FlopsTable:
    """``flops(scale)``: FLOPs of the network whose group ``g`` is ``scale[g]`` times its width."""

    def __init__(self, graph: ChannelGraph):
        p = graph.pieces
        f64 = dict(dtype=torch.float64)
        self.n_groups = len(graph.groups)
        self.coef = torch.as_tensor(p.flops, **f64)
        self.fixed = torch.as_tensor(p.fixed, dtype=torch.bool)
        self.n_out = torch.as_tensor(p.n_out, **f64)
        self.in_group = torch.as_tensor(graph.group_of[p.in_idx], dtype=torch.long)
        self.in_seg = torch.as_tensor(p.in_seg, dtype=torch.long)
        self.out_group = torch.as_tensor(graph.group_of[p.out_idx], dtype=torch.long)
        self.out_seg = torch.as_tensor(p.out_seg, dtype=torch.long)
        self.const = float(graph.const_flops.sum())

    def __call__(self, scale: torch.Tensor) -> torch.Tensor:
        scale = scale.to(torch.float64)
        n = len(self.coef)
        a_in = scale.new_zeros(n).index_add(0, self.in_seg.to(scale.device), scale[self.in_group.to(scale.device)])
        a_out = scale.new_zeros(n).index_add(0, self.out_seg.to(scale.device), scale[self.out_group.to(scale.device)])
        products = torch.where(self.fixed.to(scale.device), a_in * self.n_out.to(scale.device), a_in * a_out)
        return (self.coef.to(scale.device) * products).sum() + self.const
