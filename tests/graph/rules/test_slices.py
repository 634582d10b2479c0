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
    # ... but a dead channel of a level is its BatchNorm's constant beta, while unwritten rows stay 0:
    # nothing proves the written tensor's channel constant, so the gammas do not regularize it
    reg = netmorph.GammaFlopsRegularizer(model, x)
    assert not reg.regularized[graph.groups[a].channels].any()
    assert reg.graph.ungated["gamma"]
    # a width set by hand still resizes every level and the reader together
    narrow = netmorph.apply_structure(model, {"a.0": 5, "b.0": 5}, example_inputs=x)
    assert narrow.a[0].out_channels == narrow.b[0].out_channels == 5 and narrow.fc.in_features == 5 * 16
    assert narrow(x).shape == (4, 3)


def test_a_partial_write_of_a_dead_channel_is_not_pruned_as_dead():
    # conv -> BN with gamma 0, beta 1 -> relu writes the constant 1 into half the rows of a zeros tensor:
    # that channel is 1 in some rows and 0 in others, so removing it would change the output
    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            h = self.c(x)
            out = torch.zeros(2 * h.shape[0], h.shape[1], *h.shape[2:])
            out[:h.shape[0]] = h
            return self.head(out)
    torch.manual_seed(0)
    model, x = Half().eval(), torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        model.c[1].weight[0] = 0.0
        model.c[1].bias[0] = 1.0
    reg = netmorph.GammaFlopsRegularizer(model, x)
    assert reg.alive().all()
    check_exact(model, x)


def test_a_write_along_the_channel_axis_is_frozen():
    model, x = RowWrites(along_channels=True).eval(), torch.randn(4, 3, 4, 4)
    graph = build_graph(model, x)
    assert graph.groups[int(graph.group_of[graph.layers["a.0"].out[0]])].frozen is not None


def test_a_blank_tensor_with_a_hard_coded_channel_count_fails_loudly_when_resized():
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
    with pytest.raises(Exception, match="netmorph's rebuilt copy of your model failed"):
        netmorph.apply_structure(model, {"a.0": 5, "b.0": 5}, example_inputs=x)
