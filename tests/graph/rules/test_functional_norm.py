"""Norm layers with their own forward (timm's BatchNormAct2d / GroupNormAct pattern): the functional
norm inside them is the module's own norm, so its gamma is a source and pruning narrows the module
(keeping what else it holds, such as its activation); a functional norm on borrowed weights is frozen."""
import torch
import torch.nn.functional as F
from torch import nn

import netmorph
from netmorph.graph import build_graph
from tests.fuzz_nets import randomize_norms
from tests.test_prune import check_exact, kill


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in small: F.batch_norm with its own parameters, then its activation."""

    def __init__(self, n, act=nn.Hardswish):
        super().__init__(n)
        self.act = act()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return self.act(x)


class GroupNormAct(nn.GroupNorm):
    def __init__(self, groups, n):
        super().__init__(groups, n)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


class Borrowed(nn.Module):
    """A functional batch norm on another module's weights: nothing proves what it is."""

    def __init__(self, bn):
        super().__init__()
        self.bn = bn

    def forward(self, x):
        w = self.bn.weight
        return F.batch_norm(x, None, None, w.detach() * 1, self.bn.bias, True)


class Net(nn.Module):
    def __init__(self, norm1, norm2):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 8, 3, padding=1), norm1
        self.c2, self.n2 = nn.Conv2d(8, 8, 3, padding=1), norm2
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.n2(self.c2(self.n1(self.c1(x)))))


def test_a_batchnorm_with_its_own_forward_is_a_gamma_source_and_narrows_with_its_activation():
    torch.manual_seed(0)
    model, x = Net(BatchNormAct(8), GroupNormAct(4, 8)), torch.randn(2, 3, 8, 8)
    randomize_norms(model, torch.Generator().manual_seed(0))
    graph = build_graph(model, x)
    assert set(graph.bn_sources) == {"n1", "n2"} and graph.changeable().sum() == 8 + 4      # the GroupNorm ties pairs
    assert [len(set(graph.group_of[graph.norms["n2"]][i:i + 2].tolist())) for i in (0, 2, 4, 6)] == [1] * 4
    reg = netmorph.GammaFlopsRegularizer(model, x)
    killed = kill(model, reg, 0.5, seed=1)
    assert killed.sum() >= 4
    _, small = check_exact(model, x)
    assert type(small.n1) is BatchNormAct and isinstance(small.n1.act, nn.Hardswish)
    assert small.n1.num_features == small.c1.out_channels == len(small.n1.weight) < 8
    assert small.n2.num_channels % 2 == 0 and small.n2.num_groups == small.n2.num_channels // 2
    wide = netmorph.apply_structure(model, {"c1": 12, "c2": 10}, example_inputs=x)
    assert wide.n1.num_features == 12 and wide.n2.num_groups == 5 and isinstance(wide.n2.act, nn.SiLU)


def test_a_functional_norm_on_borrowed_weights_is_frozen():
    model, x = Net(nn.BatchNorm2d(8), nn.Identity()), torch.randn(2, 3, 8, 8)
    model.n2 = Borrowed(model.n1)
    graph = build_graph(model, x)
    c2 = next(g for g in graph.groups if "c2" in g.producers)
    assert c2.frozen is not None and "batch_norm" in c2.frozen
