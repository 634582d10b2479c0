"""Rules for transformer and modern-CNN ops: each prunes where it is sound and freezes where not."""
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import netmorph
from netmorph.graph import build_graph
from tests.conftest import reference_flops
from tests.test_prune import check_exact, kill


def group_of(graph, producer):
    return next(g for g in graph.groups if producer in g.producers)


class Sandwich(nn.Module):
    """conv(3->8) -> norm -> ReLU -> op -> conv(->4): the op under test sits between two layers."""

    def __init__(self, op, mid=8, after=None, norm=None, inputs=3):
        super().__init__()
        self.conv = nn.Conv2d(inputs, 8, 3, padding=1)
        self.norm = norm or nn.BatchNorm2d(8)
        self.op = op
        self.head = nn.Conv2d(after or mid, 4, 1)

    def forward(self, x):
        return self.head(self.op(F.relu(self.norm(self.conv(x)))))


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


PRUNABLE = {
    "interpolate": Sandwich(nn.Upsample(scale_factor=2)),
    "interpolate_bilinear": Sandwich(Fn(lambda x: F.interpolate(x, size=(5, 7), mode="bilinear"))),
    "pad_spatial": Sandwich(Fn(lambda x: F.pad(x, (1, 2, 0, 1)))),
    "pixel_shuffle": Sandwich(nn.PixelShuffle(2), after=2),
    "pixel_unshuffle": Sandwich(nn.PixelUnshuffle(2), after=32),
    "permute_roundtrip": Sandwich(Fn(lambda x: x.permute(0, 2, 3, 1).permute(0, 3, 1, 2).contiguous())),
    "transpose_roundtrip": Sandwich(Fn(lambda x: x.transpose(1, 3).transpose(3, 1))),
    "chunk_glu": Sandwich(Fn(lambda x: x.chunk(2, dim=1)[0] * torch.sigmoid(x.chunk(2, dim=1)[1])), after=4),
    "split_spatial": Sandwich(Fn(lambda x: torch.cat(x.split(4, dim=2), dim=2))),
    "getitem_spatial": Sandwich(Fn(lambda x: x[:, :, ::2, 1:])),
    "dtype_type": Sandwich(Fn(lambda x: x.type(torch.float64).type(x.dtype))),
    "group_norm": Sandwich(nn.Identity(), norm=nn.GroupNorm(4, 8)),
    "instance_norm": Sandwich(nn.Identity(), norm=nn.InstanceNorm2d(8, affine=True)),
    "conv_transpose": Sandwich(nn.Sequential(nn.ConvTranspose2d(8, 6, 2, stride=2), nn.BatchNorm2d(6), nn.ReLU()),
                               after=6),
    "conv_transpose_grouped": Sandwich(nn.Sequential(nn.ConvTranspose2d(8, 8, 3, padding=1, groups=4),
                                                     nn.BatchNorm2d(8), nn.ReLU())),
}


@pytest.mark.parametrize("name", sorted(PRUNABLE))
def test_op_keeps_channels_changeable_counts_flops_and_prunes_exactly(name):
    torch.manual_seed(0)
    model, x = PRUNABLE[name], torch.randn(2, 3, 8, 8)
    assert netmorph.count_flops(model, x) == reference_flops(model, x)
    graph = build_graph(model, x)
    assert group_of(graph, "conv").frozen is None, group_of(graph, "conv").frozen
    kill(model, netmorph.GammaFlopsRegularizer(model, x), 0.5, seed=3)
    reg, small = check_exact(model, x)
    assert small.netmorph_report.flops_after < small.netmorph_report.flops_before


def test_pixel_shuffle_ties_blocks_of_r_squared_channels():
    graph = build_graph(PRUNABLE["pixel_shuffle"], torch.randn(1, 3, 8, 8))
    assert group_of(graph, "conv").width == 2                  # 8 channels in 2 blocks of 4


def test_group_norm_channels_change_in_whole_groups():
    graph = build_graph(PRUNABLE["group_norm"], torch.randn(1, 3, 8, 8))
    assert group_of(graph, "conv").width == 4


def test_chunk_ties_the_pieces_so_they_still_cut_in_the_right_place():
    graph = build_graph(PRUNABLE["chunk_glu"], torch.randn(1, 3, 8, 8))
    assert group_of(graph, "conv").width == 4                  # channel i tied to channel i + 4


FROZEN = {   # name: (build the sandwich, with keyword arguments for Sandwich; what explain names)
    "pad_channels": (lambda **kw: Sandwich(Fn(lambda x: F.pad(x, (0, 0, 0, 0, 2, 2))), after=12, **kw), "'pad'"),
    "split_sizes": (lambda **kw: Sandwich(Fn(lambda x: torch.cat(x.split([3, 5], dim=1)[::-1], 1)), **kw), "'split'"),
    "slice_channels": (lambda **kw: Sandwich(Fn(lambda x: x[:, :6]), after=6, **kw), "'getitem'"),
    "channel_shuffle": (lambda **kw: Sandwich(Fn(lambda x: x.view(x.size(0), 2, 4, 8, 8).transpose(1, 2)
                                                 .reshape(x.size(0), 8, 8, 8)), **kw), "'view'"),
    "layer_norm_channels": (lambda **kw: Sandwich(Fn(lambda x: F.layer_norm(x.permute(0, 2, 3, 1), (8,))
                                                     .permute(0, 3, 1, 2)), **kw), "'layer_norm'"),
    "sum_over_channels": (lambda **kw: Sandwich(Fn(lambda x: x * x.sum(1, keepdim=True)), **kw), "'sum'"),
    "einsum_channel_mix": (lambda **kw: Sandwich(Fn(lambda x: torch.einsum("bchw,bdhw->bchw", x, x)), **kw),
                           "'einsum'"),
}


class Stemmed(nn.Module):
    """A changeable stem, conv(3->6) -> BN -> ReLU, in front of ``body`` (a Sandwich reading 6 channels)."""

    def __init__(self, body):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.body = body

    def forward(self, x):
        return self.body(self.stem(x))


def test_a_split_into_pieces_of_an_attribute_size_is_a_chunk_and_the_attribute_follows():
    """GPT-2's ``c_attn(x).split(self.split_size, dim=2)``; the size written as a number freezes, saying so."""
    class Fused(nn.Module):
        def __init__(self, attr):
            super().__init__()
            self.qkv, self.out = nn.Linear(8, 48), nn.Linear(16, 8)
            self.attr = attr
            if attr:
                self.split_size = 16

        def forward(self, x):
            q, k, v = self.qkv(x).split(self.split_size if self.attr else 16, dim=-1)
            return self.out(q * k + v)
    x = torch.randn(2, 8)
    assert "has no attribute (split_size, embed_dim, ...) holding the size" in netmorph.explain(Fused(False), x)
    graph = build_graph(Fused(True), x)
    assert graph.groups[int(graph.group_of[graph.layers["qkv"].out[0]])].frozen is None
    assert [(m, a) for m, a, _ in graph.attrs] == [("", "split_size")]
    small = netmorph.apply_structure(Fused(True), {"qkv": 30}, example_inputs=x)
    assert small.split_size == 10 and small.qkv.weight.shape == (30, 8) and small(x).shape == (2, 8)


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_op_that_cannot_be_proven_safe_freezes_and_explain_names_it(name):
    make, why = FROZEN[name]
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    group = group_of(build_graph(make(), x), "conv")
    assert group.frozen is not None and why in group.frozen, group.frozen
    # The FLOPs around a frozen op are still derived: behind a changeable stem, the frozen conv's count
    # follows the stem's width. Narrowed and widened networks, counted by torch's FlopCounterMode on
    # the networks really built, cost what netmorph derives for them from the original's graph.
    model = Stemmed(make(inputs=6))
    graph = build_graph(model, x)
    assert group_of(graph, "stem.0").frozen is None and why in group_of(graph, "body.conv").frozen
    reg = netmorph.GammaFlopsRegularizer(model, x)
    reg.zero_channels(graph.layers["stem.0"].out[[0, 2, 3]])
    small = netmorph.prune(model, reg)
    assert small.stem[0].out_channels == small.body.conv.in_channels == 3
    assert reg.cost() == reference_flops(small, x) < reference_flops(model, x)
    grown = netmorph.expand(model, x, {"stem.0": 6}, 1.2 * reference_flops(model, x))
    wide = netmorph.apply_structure(model, grown, example_inputs=x)
    assert wide.stem[0].out_channels == wide.body.conv.in_channels == grown["stem.0"] > 6
    assert grown.cost == pytest.approx(reference_flops(wide, x), rel=1e-12)      # (widths scaled by fractions)


def test_layer_norm_over_space_keeps_channels():
    model = Sandwich(nn.LayerNorm([8, 8]))
    assert group_of(build_graph(model, torch.randn(1, 3, 8, 8)), "conv").frozen is None


class Block(nn.Module):
    """Pre-norm transformer block, hand-written qkv attention (or nn.MultiheadAttention / SDPA)."""

    def __init__(self, dim=16, heads=2, hidden=32, attention="manual"):
        super().__init__()
        self.heads, self.head_dim, self.attention = heads, dim // heads, attention
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        if attention == "module":
            self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)
        else:
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def attend(self, x):
        if self.attention == "module":
            return self.mha(x, x, x, need_weights=False)[0]
        b, n, _ = x.shape              # sizes from attributes, not from x's width (which may change)
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))

    def forward(self, x):
        x = x + self.attend(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    def __init__(self, attention="manual"):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 16))
        self.blocks = nn.Sequential(Block(attention=attention), Block(attention=attention))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)                    # [B, N, C]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@pytest.mark.parametrize("attention", ["manual", "sdpa", "module"])
def test_transformer_mlp_width_is_exact_and_the_hidden_width_approximate(attention):
    torch.manual_seed(0)
    model, x = TinyViT(attention), torch.randn(2, 3, 16, 16)
    assert netmorph.count_flops(model, x) == reference_flops(model, x)
    graph = build_graph(model, x)
    changeable = sorted(p for g in graph.groups if g.frozen is None for p in g.producers)
    hidden = ["blocks.0.fc2", "blocks.0.proj", "blocks.1.fc2", "blocks.1.proj", "parameter 'cls'", "patch"]
    # the residual stream (patch embedding, class token, the branches' last layers) is changeable but
    # approximate (LayerNorm); unsplit nn.MultiheadAttention still freezes it (no rule)
    assert changeable == sorted(["blocks.0.fc1", "blocks.1.fc1"] + (hidden if attention != "module" else []))
    assert [g.approximate is not None for g in graph.groups if g.frozen is None and "patch" in g.producers] == \
        ([True] if attention != "module" else [])
    assert "LayerNorm 'blocks.0.norm1'" in (group_of(graph, "patch").approximate or group_of(graph, "patch").frozen)
    with torch.no_grad():                                           # kill 12 of 32 hidden units
        for blk in model.blocks:
            blk.fc1.weight[:12] = 0
            blk.fc1.bias[:12] = 0
    reg, small = check_exact(model, x, netmorph.GroupLassoFlopsRegularizer)
    assert small.blocks[0].fc1.out_features == 20 and small.blocks[1].fc2.in_features == 20
    # the MLP FLOPs are derived from the width (attention products are measured constants): the
    # narrowed and a widened network cost what torch's FlopCounterMode counts on them
    assert reg.cost() == reference_flops(small, x)
    grown = netmorph.expand(model, x, reg.structure(), 1.1 * reference_flops(model, x))
    assert grown["head"] == 5                                       # the logits stay
    wide = netmorph.apply_structure(model, grown, example_inputs=x)
    assert wide.blocks[0].fc1.out_features == grown["blocks.0.fc1"] > 20         # grown from the 20 it kept
    if attention != "module":                                       # the hidden width grows too, class token with it
        assert grown["patch"] == grown["blocks.1.fc2"] > 16
        assert wide.cls.shape == (1, 1, grown["patch"]) and wide.norm.normalized_shape == (grown["patch"],)
    else:
        assert grown["patch"] == 16
    assert grown.cost == pytest.approx(reference_flops(wide, x), rel=1e-12)      # (widths scaled by fractions)      # (widths scaled by fractions)
