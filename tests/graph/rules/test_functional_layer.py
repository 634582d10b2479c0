"""Linear and conv layers with their own forward (timm's ``Linear`` and ``Conv2dSame`` pattern): the
``F.linear`` / ``F.conv2d`` inside them on their own parameters is the layer itself, so its channels
change and pruning narrows the module keeping its class; a conv on a weight computed from the
parameter (weight standardization) is not provably the layer, and is frozen."""
import math

import torch
import torch.nn.functional as F
from torch import nn

import netmorph
from netmorph.graph import build_graph
from tests.fuzz_nets import randomize_norms
from tests.test_prune import check_exact, kill


class SameConv(nn.Conv2d):
    """timm's Conv2dSame in small: TensorFlow 'same' padding computed from the input, then F.conv2d."""

    def forward(self, x):
        h, w = x.shape[-2:]
        ph = max((math.ceil(h / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - h, 0)
        pw = max((math.ceil(w / self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - w, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class CastLinear(nn.Linear):
    """timm's Linear: F.linear with its own parameters."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class StdConv(nn.Conv2d):
    """Weight standardization: the conv reads a tensor computed from the parameter."""

    def forward(self, x):
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (self.weight.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Net(nn.Module):
    def __init__(self, middle=SameConv):
        super().__init__()
        self.a = SameConv(3, 12, 3, stride=2, bias=False)
        self.bn_a = nn.BatchNorm2d(12)
        self.b = middle(12, 16, 3, stride=1, padding=0 if middle is SameConv else 1, bias=False)
        self.bn_b = nn.BatchNorm2d(16)
        self.fc1 = CastLinear(16, 20)
        self.fc2 = CastLinear(20, 5)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.a(x)))
        x = torch.relu(self.bn_b(self.b(x)))
        return self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))


def test_own_forward_layers_are_read_through_their_functional_call_and_keep_their_class():
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 15, 15)
    randomize_norms(model, torch.Generator().manual_seed(0))
    graph = build_graph(model, x)
    assert set(graph.layers) == {"a", "b", "fc1", "fc2"}
    assert [g.width for g in graph.groups if g.frozen is None] == [12, 16, 20]       # a, b, fc1's outputs
    kill(model, netmorph.GammaFlopsRegularizer(model, x), 0.4)       # a's and b's channels: gammas
    _, small = check_exact(model, x)
    assert type(small.a) is SameConv and type(small.b) is SameConv and type(small.fc1) is CastLinear
    assert small.a.out_channels < 12 and small.b.in_channels == small.a.out_channels
    assert small.fc1.in_features == small.b.out_channels and small.fc1.weight.shape == (small.fc1.out_features,
                                                                                         small.fc1.in_features)


def test_apply_structure_widens_an_own_forward_layer_as_its_class():
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 15, 15)
    wide = netmorph.apply_structure(model, {"a": 24, "fc1": 8}, example_inputs=x)
    assert type(wide.a) is SameConv and wide.a.weight.shape == (24, 3, 3, 3) and wide.b.in_channels == 24
    assert type(wide.fc1) is CastLinear and wide.fc1.weight.shape == (8, 16) and wide.fc2.in_features == 8
    assert wide(x).shape == (2, 5)


def test_a_conv_on_a_weight_computed_from_its_parameter_is_frozen():
    model, x = Net(middle=StdConv).eval(), torch.randn(2, 3, 15, 15)
    graph = build_graph(model, x)
    assert "b" not in graph.layers
    frozen = [g for g in graph.groups if g.frozen is not None]
    assert any("conv2d" in str(g.frozen) for g in frozen)
    assert all(g.frozen is not None for g in graph.groups if g.width in (12, 16))    # what b reads and makes


def test_a_layer_read_through_its_functional_call_is_an_ancestor_like_any_layer():
    # h = l(x); y = h + f2(relu(f1(h))): only f2 ends a residual branch; l feeds both operands
    class Residual(nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.l, self.f1, self.f2 = linear(6, 8), nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            h = self.l(x)
            return h + self.f2(torch.relu(self.f1(h)))
    x = torch.randn(2, 6)
    assert build_graph(Residual(nn.Linear), x).summed == {"f2"}
    assert build_graph(Residual(CastLinear), x).summed == {"f2"}
