"""``scaled_dot_product_attention`` (rules/attention.py), the head split (rules/reshape.py) and
``expand`` (rules/repeat.py): attention heads are channels, tied across query / key / value and
read dead from the output projection's columns only; what the rules cannot prove stays."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netmorph
from netmorph.graph import build_graph
from tests.conftest import reference_flops


class Attention(nn.Module):
    """Multi-head self-attention on ``[B, N, dim]`` written the usual way. ``count``: how the head
    count is given to the split (``"-1"``, ``"attr"``: ``self.num_heads``, ``"number"``: a number
    with no attribute holding it); ``kv``: key/value heads (grouped-query when fewer);
    ``repeat``: grouped-query written with Hugging Face's repeat_kv instead of ``enable_gqa``;
    ``eager``: the products written out (matmul, softmax, matmul)."""

    def __init__(self, dim=32, heads=4, kv=None, count="-1", mask=None, repeat=False, eager=False):
        super().__init__()
        self.eager = eager
        self.head_dim = dim // heads
        if count == "attr":
            self.num_heads = heads
        self.written = heads                          # "number": written into the code (no attribute netmorph knows)
        self.count, self.repeat = count, repeat
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, (kv or heads) * self.head_dim)
        self.v = nn.Linear(dim, (kv or heads) * self.head_dim)
        self.o = nn.Linear(dim, dim)
        self.mask = mask

    @property
    def heads(self):
        return self.q.out_features // self.head_dim

    @property
    def num_key_value_heads(self):
        return self.k.out_features // self.head_dim

    def split(self, t, query):
        B, N, _ = t.shape
        n = {"-1": -1, "attr": getattr(self, "num_heads", -1), "number": self.written}[self.count] if query else -1
        return t.view(B, N, n, self.head_dim).transpose(1, 2)

    def forward(self, x, bias=None):
        B, N, _ = x.shape
        q, k, v = self.split(self.q(x), True), self.split(self.k(x), False), self.split(self.v(x), False)
        rep = q.shape[1] // max(1, k.shape[1])
        gqa = {}
        if rep > 1 and self.repeat:
            kv = k.shape[1]
            k, v = (t[:, :, None].expand(B, kv, rep, N, self.head_dim).reshape(B, kv * rep, N, self.head_dim)
                    for t in (k, v))
        elif rep > 1:
            gqa = {"enable_gqa": True}
        if self.eager:
            scores = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
            y = torch.matmul((scores if bias is None else scores + bias).softmax(dim=-1), v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask if bias is None else bias, **gqa)
        return self.o(y.transpose(1, 2).reshape(B, N, -1))


def x():
    torch.manual_seed(0)
    return torch.randn(2, 6, 32)


def heads_group(graph):
    return next(g for g in graph.groups if "q" in g.producers)


def kill_heads(model, heads, v_too=True):
    """Zero the output projection's columns of ``heads`` (of query heads) and, with ``v_too``, their
    value rows, by hand (value bias left non-zero: a constant the dead head's zero columns ignore)."""
    d = model.head_dim
    rep = model.heads // model.num_key_value_heads
    with torch.no_grad():
        for h in heads:
            model.o.weight[:, h * d:(h + 1) * d] = 0
            if v_too:
                g = h // rep
                model.v.weight[g * d:(g + 1) * d] = 0


def test_heads_are_one_group_of_whole_heads_tied_across_query_key_value_and_output(one_thread):
    model, inp = Attention().eval(), x()
    graph = build_graph(model, inp)
    group = heads_group(graph)
    assert group.width == 4 and group.frozen is None and sorted(group.producers) == ["k", "q", "v"]
    assert group.consumers == ["o"] and graph.heads[group.channels].all()
    for name in ("q", "k", "v"):                      # 8 rows (head_dim) per head, in runs
        out = graph.layers[name].out
        assert all(len(set(out[h * 8:(h + 1) * 8].tolist())) == 1 for h in range(4))
        assert len(set(out.tolist())) == 4
    assert netmorph.count_flops(model, inp) == reference_flops(model, inp)   # attention products included
    assert "(attention products)  heads       -   9,216" in netmorph.explain(model, inp)   # 2 * 2 * 4 * 6 * 6 * 16


@pytest.mark.parametrize("eager", [False, True], ids=["sdpa", "eager"])
def test_killing_value_rows_and_output_columns_prunes_whole_heads_exactly(eager, one_thread):
    model, inp = Attention(eager=eager).eval(), x()
    kill_heads(model, [1, 3])
    before = model(inp)
    reg = netmorph.GroupLassoFlopsRegularizer(model, inp, threshold=0.0)
    small = netmorph.prune(model, reg)
    assert (small(inp) - before).abs().max() <= 1e-5 * before.abs().max()
    assert small.q.weight.shape == small.k.weight.shape == small.v.weight.shape == (16, 32)
    assert small.o.weight.shape == (32, 16)
    assert netmorph.count_flops(small, inp) == reg.cost() == reference_flops(small, inp) < reference_flops(model, inp)


def test_query_and_key_rows_alone_prove_nothing(one_thread):
    """Zero query and key rows (and biases) of a head: its scores are constant, its softmax uniform, and
    it still adds the mean of its values to every token. It is no source of aliveness: the head stays."""
    model, inp = Attention().eval(), x()
    with torch.no_grad():
        for lin in (model.q, model.k):
            lin.weight[8:16] = 0
            lin.bias[8:16] = 0
    reg = netmorph.GroupLassoFlopsRegularizer(model, inp, threshold=0.0)
    assert reg.alive()[heads_group(reg.graph).channels].all()
    assert not {id(model.q.weight), id(model.k.weight)} & {id(p) for p in reg.source_parameters()}
    reg.zero_channels(heads_group(reg.graph).channels[1:2])      # the source zeroes the output columns
    assert model.o.weight[:, 8:16].abs().sum() == 0 and model.v.weight[8:16].abs().sum() > 0
    assert not reg.alive()[heads_group(reg.graph).channels[1]]


def test_a_head_with_only_value_rows_zero_is_kept(one_thread):
    """Its value bias is a constant it still adds (and under a mask a fully masked row would not):
    only the output projection's columns make a head provably dead."""
    model, inp = Attention().eval(), x()
    with torch.no_grad():
        model.v.weight[8:16] = 0
    reg = netmorph.GroupLassoFlopsRegularizer(model, inp, threshold=0.0)
    assert reg.alive()[heads_group(reg.graph).channels].all()


def test_a_padding_mask_shared_by_the_heads_keeps_them_prunable(one_thread):
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[1, :, :, 4:] = False                          # the second sequence has two padded keys
    model, inp = Attention(mask=mask).eval(), x()
    kill_heads(model, [0], v_too=False)
    before = model(inp)
    reg = netmorph.GroupLassoFlopsRegularizer(model, inp, threshold=0.0)
    small = netmorph.prune(model, reg)
    assert (small(inp) - before).abs().max() <= 1e-5 * before.abs().max() and small.q.weight.shape == (24, 32)


def test_a_mask_per_head_freezes_the_heads():
    model, inp = Attention(mask=torch.zeros(1, 4, 6, 6)).eval(), x()
    text = netmorph.explain(model, inp)
    assert heads_group(build_graph(model, inp)).frozen.startswith("touched by op 'scaled_dot_product_attention'")
    assert "scaled_dot_product_attention" in text


class BiasedStack(nn.Module):
    """Two attention layers adding one per-head position bias to their scores, computed once (as T5 computes
    its relative position bias once per stack): a linear map of relative-position features, ``[N, N, 5] ->
    [N, N, heads]``, moved to ``[1, heads, N, N]``."""

    def __init__(self, eager):
        super().__init__()
        self.bias = nn.Linear(5, 4)
        self.layers = nn.ModuleList([Attention(eager=eager), Attention(eager=eager)])

    def forward(self, t, rel):
        bias = self.bias(rel).permute(2, 0, 1).unsqueeze(0)
        for layer in self.layers:
            t = t + layer(t, bias)
        return t


@pytest.mark.parametrize("eager", [False, True], ids=["sdpa", "eager"])
def test_a_per_head_bias_shared_by_layers_ties_their_heads(eager, one_thread):
    """Head h of both layers and row h of the bias layer are one channel: dead only when head h is dead
    in both layers (output columns zero); then it goes from both, with the bias row, exactly."""
    torch.manual_seed(0)
    model, inp = BiasedStack(eager).eval(), (x(), torch.randn(6, 6, 5))
    graph = build_graph(model, inp)
    heads = [set(graph.layers[f"layers.{i}.q"].out.tolist()) for i in (0, 1)]
    assert len(heads[0]) == 4 and heads[0] == heads[1] == set(graph.layers["bias"].out.tolist())
    assert graph.groups[int(graph.group_of[graph.layers["bias"].out[0]])].frozen is None
    for layer in model.layers:
        kill_heads(layer, [1])                           # head 1: dead in both layers
    kill_heads(model.layers[0], [2])                     # head 2: dead in layer 0 only, so it stays
    before = model(*inp)
    reg = netmorph.GroupLassoFlopsRegularizer(model, inp, threshold=0.0)
    assert reg.alive()[np.array(sorted(heads[0]))].tolist() == [True, False, True, True]
    small = netmorph.prune(model, reg)
    assert (small(*inp) - before).abs().max() <= 1e-5 * before.abs().max()
    assert small.bias.weight.shape == (3, 5) and all(layer.q.weight.shape == (24, 32) for layer in small.layers)
    assert netmorph.count_flops(small, inp) == reg.cost() == reference_flops(small, *inp) < reference_flops(model, *inp)


def test_a_per_head_mask_made_by_an_unknown_op_freezes_the_heads_saying_so():
    class Made(Attention):
        def forward(self, t):
            bias = torch.cumsum(t[:, :, :4], dim=1).mean(0).t()[:, None, :].expand(4, 6, 6)[None]    # [1, 4, 6, 6]
            return super().forward(t, bias)
    model, inp = Made().eval(), x()
    why = heads_group(build_graph(model, inp)).frozen
    assert why.startswith("attention heads read a mask that differs per head") and ": touched by op '" in why, why


@pytest.mark.parametrize("repeat", [False, True], ids=["enable_gqa", "repeat_kv"])
def test_grouped_query_attention_prunes_whole_key_value_groups(repeat, one_thread):
    model, inp = Attention(heads=4, kv=2, repeat=repeat).eval(), x()
    graph = build_graph(model, inp)
    group = heads_group(graph)
    assert group.width == 2 and group.frozen is None          # a channel is a key/value group and its query heads
    assert len(set(graph.layers["q"].out[:16].tolist())) == 1
    kill_heads(model, [2, 3])                                  # query heads 2 and 3: key/value group 1
    before = model(inp)
    reg = netmorph.GroupLassoFlopsRegularizer(model, inp, threshold=0.0)
    small = netmorph.prune(model, reg)
    assert (small(inp) - before).abs().max() <= 1e-5 * before.abs().max()
    assert small.q.weight.shape == (16, 32) and small.k.weight.shape == small.v.weight.shape == (8, 32)
    assert netmorph.count_flops(small, inp) == reg.cost() == reference_flops(small, inp)


def test_grouped_query_head_killed_alone_keeps_its_group(one_thread):
    """Query head 2 dead, head 3 of the same key/value group alive: every group must keep as many
    query heads as the others, so the group stays whole."""
    model, inp = Attention(heads=4, kv=2).eval(), x()
    kill_heads(model, [2], v_too=False)
    reg = netmorph.GroupLassoFlopsRegularizer(model, inp, threshold=0.0)
    assert reg.alive()[heads_group(reg.graph).channels].all()


def test_head_count_as_an_attribute_is_updated_and_as_a_bare_number_freezes(one_thread):
    model, inp = Attention(count="attr").eval(), x()
    kill_heads(model, [0])
    small = netmorph.prune(model, netmorph.GroupLassoFlopsRegularizer(model, inp, threshold=0.0))
    assert small.num_heads == 3 and model.num_heads == 4 and small(inp).shape == inp.shape
    bare = Attention(count="number").eval()
    graph = build_graph(bare, inp)
    assert "with the count written as a number" in heads_group(graph).frozen
    assert "write the head count as -1" in netmorph.explain(bare, inp)
    computed = Attention().eval()                       # -1 heads of a head_dim no attribute holds
    computed.size = computed.__dict__.pop("head_dim")
    computed.split = lambda t, query: t.view(*t.shape[:2], -1, computed.size).transpose(1, 2)
    type(computed).head_dim = property(lambda self: self.size)
    try:
        assert "has no attribute (head_dim, attention_head_size, head_size, ...) holding 8" in \
            heads_group(build_graph(computed, inp)).frozen
    finally:
        del type(computed).head_dim


def test_apply_structure_and_expand_change_heads_in_multiples_of_head_dim(one_thread):
    model, inp = Attention().eval(), x()
    with pytest.raises(ValueError, match="multiple of 8 .it has 8 output channels per attention head"):
        netmorph.apply_structure(model, {"q": 20}, example_inputs=inp)
    wide = netmorph.apply_structure(model, {"q": 48}, example_inputs=inp, init_reference=model)
    assert wide.q.weight.shape == wide.v.weight.shape == (48, 32) and wide.o.weight.shape == (32, 48)
    assert torch.allclose(wide(inp), model(inp), atol=1e-6)        # new heads are read with zero columns
    structure = netmorph.expand(model, inp, {}, 1.2 * netmorph.count_flops(model, inp))
    assert structure["q"] % 8 == 0 and structure["q"] == structure["k"] == structure["v"]


def test_expand_of_a_channel_axis_declines():
    class Copy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 1), nn.Linear(6, 2)

        def forward(self, t):
            return self.b(self.a(t).expand(-1, 6))
    graph = build_graph(Copy(), torch.randn(3, 4))
    assert graph.groups[int(graph.group_of[graph.layers["a"].out[0]])].frozen is not None


def test_eager_products_are_heads_and_count_their_flops(one_thread):
    model, inp = Attention(eager=True).eval(), x()
    graph = build_graph(model, inp)
    assert heads_group(graph).width == 4 and heads_group(graph).frozen is None
    assert netmorph.count_flops(model, inp) == reference_flops(model, inp)


def test_matmul_with_a_weight_or_over_channels_declines():
    class Mix(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)
            self.w = nn.Parameter(torch.randn(6, 6))

        def forward(self, t):
            h = self.a(t)                                  # [B, N, 6]: channels on the last (matrix) axis
            return self.b(h @ self.w + torch.matmul(h, h.transpose(1, 2)) @ h)
    graph = build_graph(Mix(), torch.randn(2, 3, 4))
    assert graph.groups[int(graph.group_of[graph.layers["a"].out[0]])].frozen is not None


def test_apply_structure_keeps_the_heads_whose_output_columns_are_largest(one_thread):
    model, inp = Attention().eval(), x()
    with torch.no_grad():
        model.o.weight[:, 0:8] *= 0.01                 # head 0: tiny output columns, large query rows
        model.q.weight[0:8] *= 100
    narrow = netmorph.apply_structure(model, {"q": 24}, example_inputs=inp)
    assert torch.equal(narrow.o.weight, model.o.weight[:, 8:])


def test_every_head_dead_removes_the_attention_and_leaves_its_output_bias(one_thread):
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention()

        def forward(self, t):
            return t + self.attn(t)
    model, inp = Residual().eval(), x()
    kill_heads(model.attn, range(4))
    before = model(inp)
    small = netmorph.prune(model, netmorph.GroupLassoFlopsRegularizer(model, inp, threshold=0.0))
    assert (small(inp) - before).abs().max() <= 1e-5 * before.abs().max()
    assert small.netmorph_report.layers_vanished == ["attn.q", "attn.k", "attn.v"]
    assert small.netmorph_report.layers_constant == ["attn.o"]
    alone = Attention().eval()                          # no residual: a plain chain keeps one head
    kill_heads(alone, range(4))
    assert netmorph.prune(alone, netmorph.GroupLassoFlopsRegularizer(alone, inp, threshold=0.0)).q.weight.shape == (8, 32)
