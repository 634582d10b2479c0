"""Indexing along the channel axis: a slice that keeps every channel (GhostNet's
``cat([x1, cheap(x1)])[:, :out]``) is the identity while the channels narrow; they are capped (never
widened past their width); a slice that drops channels is frozen."""
import pytest
import torch
from torch import nn

import netmorph
from netmorph.graph import build_graph
from tests.fuzz_nets import randomize_norms
from tests.test_prune import check_exact, kill


class Ghost(nn.Module):
    """A GhostNet module: a primary conv, a cheap depthwise conv of its output, both concatenated and
    sliced to ``out`` channels."""

    def __init__(self, cin, out, init):
        super().__init__()
        self.out = out
        self.primary = nn.Sequential(nn.Conv2d(cin, init, 1, bias=False), nn.BatchNorm2d(init), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(init, init, 3, padding=1, groups=init, bias=False), nn.BatchNorm2d(init),
                                   nn.ReLU())

    def forward(self, x):
        x1 = self.primary(x)
        return torch.cat([x1, self.cheap(x1)], 1)[:, :self.out]


def net(init):
    return nn.Sequential(Ghost(3, 16, init), nn.Conv2d(16 if init >= 8 else 2 * init, 8, 3, bias=False),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_a_slice_keeping_every_channel_prunes_exactly_and_caps_the_group():
    torch.manual_seed(0)
    model, x = net(8).eval(), torch.randn(2, 3, 9, 9)
    randomize_norms(model, torch.Generator().manual_seed(0))
    graph = build_graph(model, x)
    ghost = next(g for g in graph.groups if "0.primary.0" in g.producers)
    assert ghost.frozen is None and ghost.width == 8
    assert int(graph.group_of[graph.layers["0.cheap.0"].out[0]]) == ghost.id      # depthwise: tied to its input
    assert graph.capped == {ghost.id}
    kill(model, netmorph.GammaFlopsRegularizer(model, x), 0.4)
    _, small = check_exact(model, x)
    assert small[0].primary[0].out_channels < 8 and small[1].in_channels == 2 * small[0].primary[0].out_channels
    with pytest.raises(ValueError, match="constant bound"):
        netmorph.apply_structure(model, {"0.primary.0": 12}, example_inputs=x)
    narrow = netmorph.apply_structure(model, {"0.primary.0": 5}, example_inputs=x)
    assert narrow(x).shape == (2, 4) and narrow[1].in_channels == 10
    # expand grows the capped group at most back to its width while the others widen
    wide = netmorph.expand(model, x, {"0.primary.0": 4, "1": 8}, 2 * netmorph.count_flops(model, x))
    assert wide["0.primary.0"] <= 8 and wide["1"] > 8


def test_a_slice_dropping_channels_freezes_them():
    model, x = net(9).eval(), torch.randn(2, 3, 9, 9)          # the concat is 18 wide, the slice keeps 16
    graph = build_graph(model, x)
    ghost = next(g for g in graph.groups if "0.primary.0" in g.producers)
    assert ghost.frozen is not None and not graph.capped


class RowWrites(nn.Module):
    """torchvision's multi-scale RoI pooling in small: two levels written into the rows of one
    ``torch.zeros`` tensor (``result[rows] = level``), then read by a linear layer."""

    def __init__(self, along_channels=False):
        super().__init__()
        self.along_channels = along_channels
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        ya, yb = self.a(x), self.b(x)
        result = torch.zeros(4, ya.shape[1], 4, 4)          # sized from the data, as torchvision does
        if self.along_channels:
            result[:, :8] = ya
        else:
            result[torch.tensor([0, 2])] = ya
            result[torch.tensor([1, 3])] = yb
        return self.fc(result.flatten(1))


def test_rows_written_into_a_zeros_tensor_carry_their_channels_and_tie_the_levels():
    torch.manual_seed(0)
    model, x = RowWrites().eval(), torch.randn(2, 3, 4, 4)
    randomize_norms(model, torch.Generator().manual_seed(0))
    graph = build_graph(model, x)
    a = int(graph.group_of[graph.layers["a.0"].out[0]])
    assert a == int(graph.group_of[graph.layers["b.0"].out[0]])          # both levels fill the same channels
    assert graph.groups[a].frozen is None and "fc" in graph.groups[a].consumers
    kill(model, netmorph.GammaFlopsRegularizer(model, x), 0.4)
    _, small = check_exact(model, x)
    assert small.a[0].out_channels == small.b[0].out_channels < 8
    assert small.fc.in_features == 16 * small.a[0].out_channels


def test_a_write_along_the_channel_axis_is_frozen():
    model, x = RowWrites(along_channels=True).eval(), torch.randn(4, 3, 4, 4)
    graph = build_graph(model, x)
    assert graph.groups[int(graph.group_of[graph.layers["a.0"].out[0]])].frozen is not None


def test_a_blank_tensor_with_a_hard_coded_channel_count_fails_loudly_when_pruned():
    # torch.zeros(4, 8, ...) with 8 written in the code cannot narrow: the rebuilt copy says so
    class HardCoded(RowWrites):
        def forward(self, x):
            ya, yb = self.a(x), self.b(x)
            result = torch.zeros(4, 8, 4, 4)
            result[torch.tensor([0, 2])] = ya
            result[torch.tensor([1, 3])] = yb
            return self.fc(result.flatten(1))
    torch.manual_seed(0)
    model, x = HardCoded().eval(), torch.randn(2, 3, 4, 4)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    kill(model, reg, 0.4)
    with pytest.raises(Exception, match="netmorph's rebuilt copy of your model failed"):
        netmorph.prune(model, reg)
