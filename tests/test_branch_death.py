"""Whole branches dying: pruning removes them (with what only fed them) and stays exact, however the
model's own forward treats the branch afterwards (an upsample or a pool after it, every input of a
concat gone, channels-last layers, an in-place add onto a constant, a forward that reads a removed
BatchNorm's attributes)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netmorph
from netmorph.graph.removed import ConstantOutput, Vanished
from tests.fuzz_nets import randomize_norms


def cbr(c_in, c_out, k=1, groups=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class PoolBranch(nn.Module):
    """DeepLabV3's ASPP in small: a global-pool branch upsampled back, a max-pooled branch, a 1x1 one."""

    def __init__(self, mode="bilinear"):
        super().__init__()
        self.mode = mode
        self.stem = cbr(3, 8, 3)
        self.a, self.p, self.m = cbr(8, 4), cbr(8, 4), cbr(8, 4)
        self.head = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        h = self.stem(x)
        p = self.p(F.adaptive_avg_pool2d(h, 1))
        p = F.interpolate(p, size=h.shape[-2:], mode=self.mode, **({"align_corners": False} if self.mode != "nearest" else {}))
        m = F.max_pool2d(self.m(h), 3, 1, 1)
        return self.head(torch.cat([self.a(h), p, m], 1))


class Fire(nn.Module):
    """SqueezeNet's fire module (with BatchNorm): squeeze, then two expand branches concatenated."""

    def __init__(self, c_in, squeeze, expand):
        super().__init__()
        self.squeeze = cbr(c_in, squeeze)
        self.e1, self.e3 = cbr(squeeze, expand), cbr(squeeze, expand, 3)

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], 1)


class Squeeze(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8, 3)
        self.fire1, self.fire2 = Fire(8, 4, 4), Fire(8, 4, 4)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = F.max_pool2d(self.stem(x), 2)
        h = self.fire2(self.fire1(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class Mlp(nn.Module):
    """A transformer block's MLP on [batch, tokens, channels], with its residual."""

    def __init__(self, d=8, hidden=16):
        super().__init__()
        self.embed = nn.Linear(6, d)
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.out = nn.Linear(d, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.fc2(F.gelu(self.fc1(h)))
        return self.out(h.mean(1))


class InPlace(nn.Module):
    """A residual block without a BatchNorm after its last conv, added in place (``out += skip``)."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 6, 3)
        self.c1 = cbr(6, 4, 3)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        skip = self.stem(x)
        out = self.c2(self.c1(skip))
        out += skip
        return self.fc(out.mean((2, 3)))


class ReadsNorm(nn.Module):
    """A forward that reads an attribute of a BatchNorm a dead branch removes."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 6, 3)
        self.a, self.b = cbr(6, 4), cbr(6, 4)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = self.stem(x)
        b = self.b(h)
        assert b.shape[1] == self.b[1].num_features, "the model checks its own widths"
        return self.fc(torch.cat([self.a(h), b], 1).mean((2, 3)))


def pruned_exactly(model, x, dead_layers, family="gamma"):
    """Kill every channel of ``dead_layers``, prune, and check the pruned copy: the same outputs (eval
    mode), the cost the regularizer predicted, fewer FLOPs. Returns (pruned, regularizer)."""
    randomize_norms(model, torch.Generator().manual_seed(0))
    model.eval()
    reg = (netmorph.GammaFlopsRegularizer if family == "gamma" else netmorph.GroupLassoFlopsRegularizer)(model, x)
    reg.zero_channels(np.concatenate([reg.graph.layers[n].out for n in dead_layers]))
    with torch.no_grad():
        before = model(x)
    small = netmorph.prune(model, reg).eval()
    with torch.no_grad():
        after = small(x)
        again = small(torch.randn(3, *x.shape[1:]))           # other inputs (and batch) still run
    assert again.shape[0] == 3
    assert torch.allclose(after, before, atol=1e-5 * before.abs().max().item(), rtol=0)
    assert netmorph.count_flops(small, x) == reg.cost() < netmorph.count_flops(model, x)
    return small, reg


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_a_dead_branch_before_an_upsample_or_a_pool_disappears(mode):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    small, _ = pruned_exactly(PoolBranch(mode), x, ["p.0", "m.0"])
    assert isinstance(small.p[0], Vanished) and isinstance(small.m[0], Vanished)
    assert small.head.in_channels == 4
    assert small.p[0].hollow and small.m[0].hollow             # the pooled and upsampled ones emit Hollow tensors
    assert type(small(x)) is torch.Tensor                       # ... that never leave the removed branch
    netmorph.build_graph(small, x)                              # the pruned copy records (and prunes) again


def test_a_concat_whose_every_input_dies_keeps_one_channel_instead_of_killing_the_network():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    small, reg = pruned_exactly(Squeeze(), x, ["fire1.e1.0", "fire1.e3.0"])
    widths = [small.fire1.e1[0], small.fire1.e3[0]]
    assert sum(0 if isinstance(m, Vanished) else m.out_channels for m in widths) == 1
    assert small.stem[0].out_channels == 8 and small.fire1.squeeze[0].out_channels == 4
    assert small.fire2.squeeze[0].in_channels == 1


def test_a_transformer_mlp_whose_hidden_layer_dies_is_its_residual_plus_a_constant():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6)
    small, _ = pruned_exactly(Mlp(), x, ["fc1"], family="weight")
    assert isinstance(small.fc1, Vanished) and isinstance(small.fc2, ConstantOutput)


def test_an_in_place_add_onto_a_constant_output_works():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    small, _ = pruned_exactly(InPlace(), x, ["c1.0"])
    assert isinstance(small.c2, ConstantOutput)


def test_a_forward_that_reads_a_removed_batchnorm_still_runs():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    small, _ = pruned_exactly(ReadsNorm(), x, ["b.0"])
    assert small.b[1].num_features == 0


def test_a_structure_removing_every_input_of_a_concat_is_refused_by_name():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="leaves 'fire2.squeeze.0' without any input"):
        netmorph.apply_structure(Squeeze(), {"fire1.e1.0": 0, "fire1.e3.0": 0}, example_inputs=x)
    one = netmorph.apply_structure(Squeeze(), {"fire1.e1.0": 0, "fire1.e3.0": 1}, example_inputs=x)
    assert isinstance(one.fire1.e1[0], Vanished) and one.fire2.squeeze[0].in_channels == 1


class Fixed(nn.Module):
    """A forward that insists on a width pruning changes: no copy with fewer channels can run it."""

    def __init__(self):
        super().__init__()
        self.stem, self.a = cbr(3, 6, 3), cbr(6, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        a = self.a(self.stem(x))
        if a.shape[1] != 4:
            raise RuntimeError("expected 4 channels")
        return self.fc(a.mean((2, 3)))


def test_when_the_rebuilt_copy_cannot_run_the_error_says_it_is_netmorphs_copy():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(netmorph.GraphRecordError, match="netmorph's rebuilt copy of your model failed to run "
                       r"\(your model itself ran\).*expected 4 channels") as info:
        netmorph.apply_structure(Fixed(), {"a.0": 2}, example_inputs=x)
    assert "Check that the example inputs" not in str(info.value)


def test_a_hollow_tensor_passes_ops_that_reject_empty_tensors_and_nothing_else():
    from netmorph.graph.removed import Hollow
    h = torch.zeros(2, 0, 4, 6).as_subclass(Hollow)
    up = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
    pooled = F.max_pool2d(F.relu(h), 2)
    assert type(up) is Hollow and up.shape == (2, 0, 8, 12)
    assert type(pooled) is Hollow and pooled.shape == (2, 0, 2, 3)
    joined = torch.cat([torch.ones(2, 3, 8, 12), up], 1)
    assert type(joined) is torch.Tensor and torch.equal(joined, torch.ones(2, 3, 8, 12))
    with pytest.raises(RuntimeError):
        h + torch.ones(2, 3, 4, 6)                # a real operand could broadcast against a stand-in: refused


class Cascade(nn.Module):
    """p reads cat(a, b); c reads cat(p, q): with a, b, p, q all dead, keeping a channel of p for c
    leaves p without inputs, so one of a, b must keep a channel too."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.p, self.q, self.c = cbr(3, 4, 3), cbr(3, 2, 3), cbr(6, 4, 3), cbr(3, 2, 3), cbr(6, 8, 3)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = self.p(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(self.c(torch.cat([h, self.q(x)], 1)).mean((2, 3)))


class UnevenTower(nn.Module):
    """A residual branch r2(r1(grouped(cat(a, b)))): the concat's group is covered unevenly, and dies
    as a dead tower when r1 dies, which a width of 0 describes exactly."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b, self.g, self.r1 = cbr(3, 8, 3), cbr(8, 2, 3), cbr(8, 2, 3), cbr(4, 4, 3, 2), cbr(4, 6, 3)
        self.r2 = nn.Sequential(nn.Conv2d(6, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.r2(self.r1(self.g(torch.cat([self.a(x), self.b(x)], 1))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("net, dead", [(Cascade, ["a.0", "b.0", "p.0", "q.0"]), (UnevenTower, ["r1.0"])])
def test_what_settle_keeps_is_a_structure_apply_structure_and_expand_accept(net, dead):
    """(Found by review.) The learned structure of a settled network is one the width tools build."""
    from netmorph.morph import make_regularizer
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    small, _ = pruned_exactly(net(), x, dead)
    model = net().eval()
    randomize_norms(model, torch.Generator().manual_seed(0))
    reg = make_regularizer(model, x, widths=True)
    reg.zero_channels(np.concatenate([reg.graph.layers[n].out for n in dead]))
    learned = reg.structure()
    built = netmorph.apply_structure(model, learned, example_inputs=x)
    assert netmorph.count_flops(built, x) == reg.cost() == netmorph.count_flops(small, x)
    grown = netmorph.expand(model, x, learned, budget=netmorph.count_flops(model, x))
    assert netmorph.count_flops(netmorph.apply_structure(model, grown, example_inputs=x), x) == grown.cost
