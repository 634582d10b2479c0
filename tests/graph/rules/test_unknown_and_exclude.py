"""Ops without a rule freeze what they touch; exclude freezes a module's outputs."""
import pytest
import torch
from torch import nn

import netmorph
from netmorph.graph import build_graph
from netmorph.models import resnet20
from tests.conftest import reference_flops


class Rolled(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.c3 = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        h = torch.relu(self.bn1(self.c1(x)))
        h = torch.roll(h, 1, dims=1)                          # no rule: freezes c1's channels
        return self.c3(torch.relu(self.bn2(self.c2(h))))


def test_unknown_op_freezes_its_channels_and_names_itself(x8):
    model = Rolled()
    assert netmorph.count_flops(model, x8) == reference_flops(model, x8)
    graph = build_graph(model, x8)
    frozen = {g.producers[0]: g.frozen for g in graph.groups}
    assert "'roll'" in frozen["c1"]
    assert frozen["c2"] is None                              # c2 only reads the frozen channels
    text = netmorph.explain(model, x8)
    assert "roll" in text and "FROZEN" in text


def test_exclude_freezes_matching_modules_and_refuses_unknown_patterns():
    x = torch.randn(1, 3, 32, 32)
    model = resnet20()
    graph = build_graph(model, x, exclude=[r"layer1\.0\.conv1"])
    group = next(g for g in graph.groups if g.producers == ["layer1.0.conv1"])
    assert "excluded by the user" in group.frozen
    reg = netmorph.GammaFlopsRegularizer(model, x, exclude=r"layer3\..*")
    stage3 = next(g for g in reg.graph.groups if "layer3.0.conv2" in g.producers)
    assert stage3.frozen is not None and not reg.regularized[stage3.channels].any()
    with pytest.raises(ValueError, match="matches no module"):
        build_graph(model, x, exclude=["layer9"])


class ChannelsLastNorm(nn.Module):
    """ConvNeXt's block in small (a layer norm over channels on a channels-last view, here a functional
    one with no module of its own, which netmorph could not resize: frozen), then an MLP of 1x1 convs:
    the norm freezes the channels it mixes, and nothing else."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = self.stem(x)
        n = torch.nn.functional.layer_norm(h.permute(0, 2, 3, 1), (8,)).permute(0, 3, 1, 2)
        return self.head(h + self.fc2(torch.nn.functional.gelu(self.fc1(n))))


def test_a_frozen_output_keeps_the_channel_axis_of_its_input_so_the_next_layers_still_prune(x8):
    """An op that freezes a channels-last tensor gives its output frozen channels on the *last* axis
    (the input's), not on axis 1 (its height): after the permute back, the 1x1 conv reads channels
    on axis 1 and its hidden width stays changeable."""
    torch.manual_seed(0)
    model = ChannelsLastNorm()
    graph = build_graph(model, x8)
    hidden = next(g for g in graph.groups if "fc1" in g.producers)
    assert hidden.frozen is None and hidden.width == 16
    assert next(g for g in graph.groups if "stem" in g.producers).frozen.startswith("touched by op 'layer_norm'")
    reg = netmorph.GroupLassoFlopsRegularizer(model, x8)
    reg.zero_channels(graph.layers["fc1"].out[:10])
    with torch.no_grad():
        before = model(x8)
    small = netmorph.prune(model, reg)
    with torch.no_grad():
        assert torch.allclose(small(x8), before, atol=1e-6)
    assert small.fc1.out_channels == 6 and netmorph.count_flops(small, x8) == reg.cost() == reference_flops(small, x8)
