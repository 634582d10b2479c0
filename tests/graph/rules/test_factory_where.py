"""``rules/factory.py`` (a constant made with one axis per head) and ``rules/where.py`` (a per-head
bias merged with a broadcast mask), on a toy eager attention: heads stay prunable and go exactly, and
what the rules cannot prove freezes the heads, naming the op."""
import pytest
import torch
from torch import nn

import netmorph
from netmorph.graph import build_graph


class Toy(nn.Module):
    """Eager attention over 4 heads of 8 with a per-head bias made by ``torch.zeros`` and merged with a
    causal mask by ``torch.where``; ``attr`` names the head-count attribute (None: the count is a number)."""

    def __init__(self, attr="n_heads", mask_per_head=False):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))
        self.head_dim, self.attr, self.mask_per_head = 8, attr, mask_per_head
        if attr:
            setattr(self, attr, 4)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = (lin(x).view(B, N, -1, self.head_dim).transpose(1, 2) for lin in (self.q, self.k, self.v))
        heads = getattr(self, self.attr) if self.attr else 4
        bias = torch.zeros((1, heads, N, N))
        causal = torch.ones(N, N).tril().bool()[None, None]
        if self.mask_per_head:
            causal = causal.expand(1, heads, N, N) & (torch.rand(1, heads, 1, 1) >= 0)
        bias = torch.where(causal, bias, torch.finfo(bias.dtype).min)
        scores = q @ k.transpose(-1, -2) / self.head_dim ** 0.5 + bias
        y = scores.softmax(-1) @ v
        return self.o(y.transpose(1, 2).reshape(B, N, -1))


def head_channels(graph):
    return sorted(set(graph.layers["q"].out.tolist()))


def test_a_zeros_bias_with_a_head_count_attribute_and_a_causal_where_keep_the_heads_prunable():
    torch.manual_seed(0)
    model, x = Toy().eval(), torch.randn(1, 6, 32)
    graph = build_graph(model, x)
    heads = head_channels(graph)
    assert len(heads) == 4 and all(graph.frozen[c] is None for c in heads)
    reg = netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)
    reg.zero_channels([heads[2]])
    with torch.no_grad():
        before = model(x)
    small = netmorph.prune(model, reg).eval()
    assert small.n_heads == 3 and small.q.out_features == 24
    with torch.no_grad():
        assert (small(x) - before).abs().max() <= 1e-5 * before.abs().max()


def test_a_head_count_written_as_a_number_freezes_the_heads_naming_the_bias_ops():
    """``torch.zeros((1, 4, N, N))`` with no attribute holding 4: the pruned copy would make it 4 heads
    wide again, so the bias (and the ``where`` that merges it) freeze the heads."""
    model, x = Toy(attr=None).eval(), torch.randn(1, 6, 32)
    graph = build_graph(model, x)
    reasons = {graph.frozen[c] for c in head_channels(graph)}
    assert len(reasons) == 1
    reason = reasons.pop()
    assert "'zeros'" in reason or "'where'" in reason, reason
    assert "zeros" in netmorph.explain(model, x)


def test_a_mask_that_differs_per_head_is_declined_by_where():
    model, x = Toy(mask_per_head=True).eval(), torch.randn(1, 6, 32)
    graph = build_graph(model, x)
    reasons = {graph.frozen[c] for c in head_channels(graph)}
    assert None not in reasons and any("where" in r or "and" in r or "rand" in r for r in reasons), reasons
