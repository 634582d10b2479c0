"""Residual add/sub, broadcast mul (squeeze-and-excitation), torch.cat."""
import torch
from torch import nn

import netmorph
from netmorph.graph import build_graph
from tests.conftest import reference_flops, set_gammas


class TwoBranches(nn.Module):
    """a: conv+BN, b: conv+BN (or conv alone), combined by add/sub/cat, then a 1x1 head."""

    def __init__(self, how, b_has_bn=True):
        super().__init__()
        self.how = how
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(3, 4 if how != "cat" else 6, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(self.b.out_channels) if b_has_bn else nn.Identity()
        self.head = nn.Conv2d(10 if how == "cat" else 4, 2, 1)

    def forward(self, x):
        a, b = self.bn_a(self.a(x)), self.bn_b(self.b(x))
        if self.how == "add":
            h = a + b
        elif self.how == "sub":
            h = torch.sub(a, b)
        elif self.how == "iadd":
            a += b
            h = a
        else:
            h = torch.cat([a, b], dim=1)
        return self.head(torch.relu(h))


def test_residual_add_ties_channels_and_takes_the_max_gamma(x8):
    for how in ("add", "sub", "iadd"):
        model = TwoBranches(how)
        set_gammas(model.bn_a, [1, 0, 0, 2])
        set_gammas(model.bn_b, [0, 0, 3, 1])
        reg = netmorph.GammaFlopsRegularizer(model, x8)
        assert dict(reg.structure()) == {"a": 3, "b": 3, "head": 2}, how
        # a: 1152*3*3, b: 128*3*3, head: 128*3*2
        assert reg.cost() == 1152 * 9 + 128 * 9 + 128 * 6
        # channel values max(|ga|, |gb|) = [1, 0, 3, 2], sum 6:
        # a: 1152*(3*6), b: 128*(3*6), head: 128*(2 outputs * 6)
        assert reg.loss().item() == 1152 * 18 + 128 * 18 + 128 * 12


def test_add_of_an_ungated_branch_cannot_be_proven_dead(x8):
    model = TwoBranches("add", b_has_bn=False)
    set_gammas(model.bn_a, [0, 0, 0, 0])
    reg = netmorph.GammaFlopsRegularizer(model, x8)
    assert reg.structure()["a"] == 4                          # b's raw conv output still flows
    assert reg.regularized.sum() == 0
    assert "without passing a BatchNorm" in netmorph.explain(model, x8)


def test_cat_stacks_channels_without_tying_the_inputs(x8):
    model = TwoBranches("cat")
    assert netmorph.count_flops(model, x8) == reference_flops(model, x8)
    set_gammas(model.bn_a, [1, 0, 0, 1])
    set_gammas(model.bn_b, [1, 1, 1, 0, 1, 1])
    reg = netmorph.GammaFlopsRegularizer(model, x8)
    assert dict(reg.structure()) == {"a": 2, "b": 5, "head": 2}
    assert reg.cost() == 1152 * 3 * 2 + 128 * 3 * 5 + 128 * 7 * 2
    groups = build_graph(model, x8).groups
    assert len([g for g in groups if g.frozen is None]) == 2


class SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.reduce = nn.Conv2d(4, 2, 1)
        self.expand = nn.Conv2d(2, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        s = torch.sigmoid(self.expand(torch.relu(self.reduce(h.mean((2, 3), keepdim=True)))))
        return self.head(h * s)


def test_squeeze_excitation_scale_is_tied_to_the_channels_it_scales(x8):
    model = SE()
    assert netmorph.count_flops(model, x8) == reference_flops(model, x8)
    graph = build_graph(model, x8)
    main = next(g for g in graph.groups if "conv" in g.producers)
    assert set(main.producers) == {"conv", "expand"} and main.frozen is None
    assert set(main.consumers) == {"reduce", "head"}
    set_gammas(model.bn, [1, 0, 1, 1])
    reg = netmorph.GammaFlopsRegularizer(model, x8)
    assert dict(reg.structure()) == {"conv": 3, "reduce": 2, "expand": 3, "head": 2}
    # conv 1152*3*3; reduce (1x1 map) 2*3*2; expand 2*2*3; head 128*3*2
    assert reg.cost() == 1152 * 9 + 12 + 12 + 128 * 6


def test_a_per_channel_parameter_is_tied_to_what_it_scales_and_pruned_with_it(x8):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.scale = nn.Parameter(torch.arange(1.0, 5.0).reshape(1, 4, 1, 1))
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(self.bn(self.conv(x)) * self.scale * 2.0)
    torch.manual_seed(0)
    model = Scaled().eval()
    graph = build_graph(model, x8)
    conv_group = next(g for g in graph.groups if "conv" in g.producers)
    assert conv_group.frozen is None and "parameter 'scale'" in conv_group.producers
    assert [(n, axis) for n, axis, _ in graph.params] == [("scale", 1)]
    set_gammas(model.bn, [1.0, 0.0, 1.0, 0.0])
    with torch.no_grad():
        model.bn.bias.copy_(torch.tensor([0.5, 0.25, -0.5, 1.0]))      # dead channels emit beta * scale * 2
        before = model(x8)
    small = netmorph.prune(model, netmorph.GammaFlopsRegularizer(model, x8))
    assert small.scale.shape == (1, 2, 1, 1) and small.scale.flatten().tolist() == [1.0, 3.0]
    with torch.no_grad():
        assert torch.allclose(small(x8), before, atol=1e-5)
