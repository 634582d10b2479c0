"""Activations, dropout, pooling, spatial mean/sum pass channels through; channel reductions freeze."""
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import netmorph
from netmorph.graph import build_graph
from tests.conftest import reference_flops, set_gammas

ACTS = [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.1), nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.Sigmoid(),
        nn.Hardsigmoid(), nn.Tanh(), nn.Dropout(0.3), nn.Identity(), nn.MaxPool2d(2), nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(2), nn.AdaptiveMaxPool2d(3), nn.ReLU(inplace=True)]


@pytest.mark.parametrize("act", ACTS, ids=lambda m: type(m).__name__)
def test_channelwise_ops_keep_the_group_changeable(act, x8):
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), act, nn.Conv2d(6, 2, 1))
    assert netmorph.count_flops(model, x8) == reference_flops(model, x8)
    set_gammas(model[1], [1, 1, 0, 1, 0, 1])
    reg = netmorph.GammaFlopsRegularizer(model, x8)
    assert dict(reg.structure()) == {"0": 4, "3": 2}
    assert len([g for g in reg.graph.groups if g.frozen is None]) == 1


class Reduce(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        h = F.silu(self.bn(self.conv(x)))
        if self.how == "mean":
            h = h.mean((2, 3))
        elif self.how == "sum":
            h = torch.sum(h, dim=[-1, -2])
        elif self.how == "keepdim":
            h = h.mean((2, 3), keepdim=True).flatten(1)
        elif self.how == "channel":
            h = h - h.mean(1, keepdim=True)                  # mixes channels
            h = h.mean((2, 3))
        return self.fc(h)


@pytest.mark.parametrize("how", ["mean", "sum", "keepdim"])
def test_spatial_reductions_pass_channels(how, x8):
    model = Reduce(how)
    assert netmorph.count_flops(model, x8) == reference_flops(model, x8)
    group = next(g for g in build_graph(model, x8).groups if "conv" in g.producers)
    assert group.frozen is None and group.consumers == ["fc"]


def test_reduction_over_channels_freezes(x8):
    group = next(g for g in build_graph(Reduce("channel"), x8).groups if "conv" in g.producers)
    assert group.frozen is not None and "'mean'" in group.frozen


def test_element_wise_math_of_transformer_activations_passes_channels():
    # GPT-2's gelu written out with pow and tanh, BERT's with erf: the MLP hidden width stays changeable
    class Mlp(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.act = act
            self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 8)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))
    acts = {"gpt2": lambda h: 0.5 * h * (1 + torch.tanh(0.79788 * (h + 0.044715 * torch.pow(h, 3.0)))),
            "bert": lambda h: h * 0.5 * (1.0 + torch.erf(h / 1.41421)),
            "square": lambda h: torch.square(h).neg().exp()}
    x = torch.randn(2, 5, 8)
    for name, act in acts.items():
        graph = build_graph(Mlp(act), x)
        hidden = graph.groups[int(graph.group_of[graph.layers["fc1"].out[0]])]
        assert hidden.frozen is None and hidden.width == 32, name
    graph = build_graph(Mlp(lambda h: torch.pow(h, -1.0)), x)                  # 0 ** -1 = inf: not provable
    assert graph.groups[int(graph.group_of[graph.layers["fc1"].out[0]])].frozen is not None
