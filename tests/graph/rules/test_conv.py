"""Conv rule: plain, grouped and depthwise (with multiplier) convolutions, costs by hand."""
import numpy as np
import torch
from torch import nn

import netmorph
from netmorph.graph import build_graph
from tests.conftest import Chain, reference_flops, set_gammas


def test_plain_conv_cost_and_regularizer_by_hand(x8):
    model = Chain()
    # conv1: C = 2 * 1 * (8*8) * (3*3) = 1152 per in x out;  conv2: C = 2 * 64 * 1 = 128
    assert netmorph.count_flops(model, x8) == 1152 * 3 * 8 + 128 * 8 * 4 == 31744 == reference_flops(model, x8)
    set_gammas(model.bn1, [0, 0, 0, 0.5, 1.0, 1.0, 2.0, 0.25])
    reg = netmorph.GammaFlopsRegularizer(model, x8)
    # 5 channels alive: 1152 * 3 * 5 + 128 * 5 * 4
    assert reg.cost() == 17280 + 2560
    # G = conv1: 1152 * (3 alive in * 4.75) + conv2: 128 * (4 alive out * 4.75); inputs and outputs carry 0
    loss = reg.loss()
    assert loss.item() == 1152 * 3 * 4.75 + 128 * 4 * 4.75 == 18848.0
    loss.backward()
    # d G / d gamma_j = sign(gamma_j) * (1152 * 3 + 128 * 4); zero gammas get no push from |.| at 0
    expected = np.sign([0, 0, 0, 0.5, 1.0, 1.0, 2.0, 0.25]) * 3968.0
    assert np.allclose(model.bn1.weight.grad.numpy(), expected)
    assert model.conv1.weight.grad is None                  # gradients flow only through gammas
    assert dict(reg.structure()) == {"conv1": 5, "conv2": 4}


def test_threshold_is_strict(x8):
    model = Chain()
    set_gammas(model.bn1, [1e-3, 1e-3, 2e-3, 1, 1, 1, 1, 1])
    reg = netmorph.GammaFlopsRegularizer(model, x8, gamma_threshold=1e-3)
    assert reg.structure()["conv1"] == 6                      # |gamma| > 1e-3, not >=


class Grouped(nn.Module):
    """conv1(3->8) -> BN -> ReLU -> conv(8->8, groups=2) -> BN -> ReLU -> conv(8->4, k1)."""

    def __init__(self, groups=2, mid=8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.gconv = nn.Conv2d(8, mid, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.head = nn.Conv2d(mid, 4, 1)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.head(torch.relu(self.bn2(self.gconv(x))))


def test_grouped_conv_changes_in_whole_groups(x8):
    model = Grouped()
    # conv1 1152*3*8 = 27648; gconv 1152 * (4*4 + 4*4) = 36864; head 128*8*4 = 4096
    assert netmorph.count_flops(model, x8) == 68608 == reference_flops(model, x8)
    set_gammas(model.bn1, [0, 0, 0, 0, 1, 1, 1, 1])
    reg = netmorph.GammaFlopsRegularizer(model, x8)
    assert reg.structure()["conv1"] == 8                      # bn2 keeps group 0 alive: any member
    set_gammas(model.bn2, [0, 0, 0, 0, 1, 1, 1, 1])
    assert reg.structure()["conv1"] == 4 and reg.structure()["gconv"] == 4
    # conv1 1152*3*4 + gconv 1152*(0*0 + 4*4) + head 128*4*4
    assert reg.cost() == 13824 + 18432 + 2048
    set_gammas(model.bn2, [0, 0, 0, 1, 1, 1, 1, 1])           # one member alive keeps the whole group
    assert reg.structure()["gconv"] == 8


class Depthwise(nn.Module):
    """conv(3->4) -> BN -> depthwise conv(4->8, groups=4: multiplier 2) -> BN -> conv(8->4, k1)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.head(torch.relu(self.bn2(self.dw(x))))


def test_depthwise_with_multiplier_ties_input_i_to_outputs_2i_2i_plus_1(x8):
    model = Depthwise()
    # conv1 1152*3*4 = 13824; dw 1152 * (4 groups * 1 * 2) = 9216; head 128*8*4 = 4096
    assert netmorph.count_flops(model, x8) == 27136 == reference_flops(model, x8)
    set_gammas(model.bn1, [1, 0, 1, 1])
    set_gammas(model.bn2, [1, 1, 0, 0, 1, 1, 1, 1])           # dw outputs 2, 3 come from input 1
    reg = netmorph.GammaFlopsRegularizer(model, x8)
    assert dict(reg.structure()) == {"conv1": 3, "dw": 6, "head": 4}
    assert reg.cost() == 1152 * 3 * 3 + 1152 * 3 * 2 + 128 * 6 * 4
    # regularizer of a depthwise piece (METHODS 1.3): C * (sum|g_in| + sum|g_out|), full counts;
    # all gammas 1 except the dead class: conv1 1152*(3 alive in * 3) ; dw 1152 * 3 classes * (1*2 + 2*1)
    # ... (the value of a class is the max over its members, here 1); head 128 * (4 * 6 slots of value 1)
    expected = 1152 * 3 * 3 + 1152 * 3 * (1 * 2 + 2 * 1) + 128 * 4 * 6
    assert reg.loss().item() == expected


def test_conv1d_and_conv3d_count_like_the_flop_counter():
    m1 = nn.Sequential(nn.Conv1d(3, 6, 5, stride=2), nn.BatchNorm1d(6), nn.ReLU(), nn.Conv1d(6, 2, 1))
    x1 = torch.randn(2, 3, 40)
    assert netmorph.count_flops(m1, x1) == reference_flops(m1, x1) == 2 * 2 * 18 * 5 * 3 * 6 + 2 * 2 * 18 * 6 * 2
    m3 = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 2, 1))
    x3 = torch.randn(1, 2, 4, 5, 6)
    assert netmorph.count_flops(m3, x3) == reference_flops(m3, x3)
    g = build_graph(m3, x3)
    assert [grp.width for grp in g.groups if grp.frozen is None] == [4]


def test_shared_conv_called_twice_ties_both_inputs_and_counts_both_calls():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1, bias=False)
            self.bn_a = nn.BatchNorm2d(4)
            self.b = nn.Conv2d(3, 4, 1, bias=False)
            self.bn_b = nn.BatchNorm2d(4)
            self.shared = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.shared(torch.relu(self.bn_a(self.a(x)))) + self.shared(torch.relu(self.bn_b(self.b(x))))
    model, x = Shared(), torch.randn(1, 3, 5, 5)
    assert netmorph.count_flops(model, x) == reference_flops(model, x) == 2 * 25 * (3 * 4 * 2 + 4 * 2 * 2)
    graph = build_graph(model, x)
    tied = [g for g in graph.groups if "a" in g.producers]
    assert len(tied) == 1 and set(tied[0].producers) == {"a", "b"}
    assert graph.layers["shared"].calls == 2
    set_gammas(model.bn_a, [0, 1, 1, 1])
    set_gammas(model.bn_b, [0, 0, 1, 1])
    reg = netmorph.GammaFlopsRegularizer(model, x)
    assert reg.structure()["a"] == reg.structure()["b"] == 3
    assert reg.cost() == 2 * 25 * (3 * 3 * 2 + 3 * 2 * 2)


def test_a_conv_reading_a_frozen_tensor_along_another_axis_reads_it_along_axis_1():
    # Wav2Vec2's feature encoder: a waveform [B, T] becomes [B, 1, T]; the recorded input has its
    # (frozen) channels on the time axis, and the first conv re-reads it along axis 1 instead of refusing
    class Waveform(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 8, 5, bias=False)
            self.norm = nn.BatchNorm1d(8)
            self.head = nn.Conv1d(8, 4, 3)

        def forward(self, x):
            return self.head(torch.relu(self.norm(self.conv(x[:, None]))))
    graph = build_graph(Waveform(), torch.randn(2, 50))
    made = graph.groups[int(graph.group_of[graph.layers["conv"].out[0]])]
    assert made.width == 8 and made.frozen is None
