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
