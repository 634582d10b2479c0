"""Linear on [B, C], and flatten / view / reshape / squeeze from a conv map into it."""
import pytest
import torch
from torch import nn

import netmorph
from netmorph.graph import build_graph
from tests.conftest import reference_flops, set_gammas


class ConvToLinear(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 16 if how != "squeeze" else 4, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))                # [B, 4, 4, 4]
        if self.how == "flatten":
            h = torch.flatten(h, 1)
        elif self.how == "module":
            h = nn.Flatten()(h)
        elif self.how == "view":
            h = h.view(h.size(0), -1)
        elif self.how == "reshape":
            h = h.reshape(h.shape[0], -1)
        elif self.how == "hardcoded":
            h = h.view(-1, 64)
        elif self.how == "squeeze":
            h = nn.functional.adaptive_avg_pool2d(h, 1).squeeze(-1).squeeze(-1)
        return self.fc(h)


@pytest.mark.parametrize("how", ["flatten", "module", "view", "reshape"])
def test_flattened_channel_carries_its_spatial_positions_into_the_linear_layer(how):
    model, x = ConvToLinear(how), torch.randn(2, 3, 4, 4)
    # conv: 2 * 2 * 16 * 9 * 3 * 4 = 6912; fc: 2 * 2 rows * 64 * 5 = 1280
    assert netmorph.count_flops(model, x) == 6912 + 1280 == reference_flops(model, x)
    set_gammas(model.bn, [1, 0, 1, 1])
    reg = netmorph.GammaFlopsRegularizer(model, x)
    assert reg.cost() == 6912 * 3 / 4 + 2 * 2 * 48 * 5         # one channel = 16 features gone
    # regularizer: fc input side sums |gamma| once per feature: 5 outputs * 16 * (1+1+1)
    assert reg.loss().item() == 2 * 2 * 16 * 9 * 3 * 3 + 2 * 2 * 5 * 16 * 3


def test_hard_coded_view_size_freezes_the_channels():
    graph = build_graph(ConvToLinear("hardcoded"), torch.randn(2, 3, 4, 4))
    conv_group = next(g for g in graph.groups if "conv" in g.producers)
    assert conv_group.frozen is not None and "'view'" in conv_group.frozen


def test_squeeze_after_global_pool():
    model, x = ConvToLinear("squeeze"), torch.randn(2, 3, 4, 4)
    assert netmorph.count_flops(model, x) == reference_flops(model, x)
    conv_group = next(g for g in build_graph(model, x).groups if "conv" in g.producers)
    assert conv_group.frozen is None and conv_group.consumers == ["fc"]


def test_linear_on_token_inputs_counts_every_row_and_prunes_the_hidden_width():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(2, 5, 6)                                 # [B, N, C]: 10 rows
    assert netmorph.count_flops(model, x) == reference_flops(model, x) == 2 * 10 * (6 * 8 + 8 * 3)
    groups = build_graph(model, x).groups
    assert [g.frozen is None for g in groups] == [False, True, False]    # input, hidden, output
    with torch.no_grad():
        model[0].weight[:2] = 0
    assert netmorph.GroupLassoFlopsRegularizer(model, x).cost() == 2 * 10 * (6 * 6 + 6 * 3)


def test_mlp_with_group_lasso():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(4, 6)
    with torch.no_grad():
        model[0].weight[:3] = 0                               # rows 0..2: dead features
    reg = netmorph.GroupLassoFlopsRegularizer(model, x)
    assert dict(reg.structure()) == {"0": 5, "2": 3}
    assert reg.cost() == 2 * 4 * (6 * 5 + 5 * 3)
    # value of feature j = RMS of row j of the first layer's weight
    rms = model[0].weight.pow(2).mean(1).sqrt()
    expected = 2 * 4 * (6 * rms.sum() + 3 * rms.sum())
    assert torch.isclose(reg.loss(), expected)
