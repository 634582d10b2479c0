"""apply_structure: narrower (like prune), wider (old weights kept, new ones initialized), errors."""
import numpy as np
import pytest
import torch

import netmorph
from torch import nn

from netmorph.graph.removed import ConstantOutput, Vanished
from netmorph.models import MODELS, get_model, resnet20
from tests.test_prune import kill, outputs


def _input(name):
    return torch.randn(2, 1, 8, 8) if name == "tiny" else torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_narrowing_by_importance_keeps_the_alive_channels_like_prune(name):
    torch.manual_seed(0)
    model, x = get_model(name), _input(name)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    kill(model, reg, 0.4)
    narrow = netmorph.apply_structure(model, reg.structure(), example_inputs=x)
    assert torch.allclose(outputs(narrow, x), outputs(model, x), atol=1e-5)
    assert netmorph.count_flops(narrow, x) == reg.cost()


def changeable_widths(model, x, factor):
    graph = netmorph.build_graph(model, x)
    return {name: layer.width * factor for name, layer in graph.layers.items()
            if graph.groups[graph.group_of[layer.out[0]]].frozen is None}


def test_widening_keeps_the_old_weights_and_can_be_undone():
    torch.manual_seed(0)
    model, x = resnet20(), torch.randn(2, 3, 32, 32)
    model.eval()
    wide = netmorph.apply_structure(model, changeable_widths(model, x, 2), example_inputs=x)
    # every changeable width doubled = the width-2 ResNet-20 (input and classes stay)
    assert netmorph.count_flops(wide, x) == netmorph.count_flops(resnet20(width=2.0), x)
    assert torch.equal(wide.conv1.weight[:16], model.conv1.weight)
    assert torch.equal(wide.layer2[0].conv1.weight[:32, :16], model.layer2[0].conv1.weight)
    assert wide.layer2[0].conv1.weight[32:].abs().sum() > 0            # new channels initialized, not zero
    assert torch.equal(wide.bn1.weight[16:], torch.ones(16))            # new BN channels: gamma 1, beta 0
    back = netmorph.apply_structure(wide, changeable_widths(model, x, 1), keep="first", example_inputs=x)
    assert torch.allclose(outputs(back, x), outputs(model, x), atol=1e-6)


def test_widening_through_flatten_concat_and_depthwise():
    for name in ("vgg11", "inception", "densenet", "mobilenetv2", "senet"):
        torch.manual_seed(0)
        model, x = get_model(name), _input(name)
        wide = netmorph.apply_structure(model, changeable_widths(model, x, 2), example_inputs=x)
        assert outputs(wide, x).shape == outputs(model, x).shape
        back = netmorph.apply_structure(wide, changeable_widths(model, x, 1), keep="first", example_inputs=x)
        assert torch.allclose(outputs(back, x), outputs(model, x), atol=1e-5), name


def test_width_zero_removes_a_residual_branch():
    torch.manual_seed(0)
    model, x = resnet20(), torch.randn(2, 3, 32, 32)
    small = netmorph.apply_structure(model, {"layer3.1.conv1": 0}, example_inputs=x)
    assert isinstance(small.layer3[1].conv1, Vanished)
    assert netmorph.count_flops(small, x) == netmorph.count_flops(model, x) - 2 * 2 * 4_718_592


class Bottleneck(nn.Module):
    """1x1 (c -> m) -> 3x3 (m -> m) -> 1x1 (m -> c), each with BN, added to the input."""

    def __init__(self, c=8, m=4):
        super().__init__()
        conv_bn = lambda i, o, k: nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o))  # noqa: E731
        self.a, self.b, self.c = conv_bn(c, m, 1), conv_bn(m, m, 3), conv_bn(m, c, 1)

    def forward(self, x):
        return torch.relu(x + self.c(torch.relu(self.b(torch.relu(self.a(x))))))


class BottleneckNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(Bottleneck(), Bottleneck())
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def test_a_removed_bottleneck_takes_its_first_conv_with_it():
    torch.manual_seed(0)
    model, x = BottleneckNet().eval(), torch.randn(2, 3, 6, 6)
    # the 3x3's group is the removable one (its reader's output is added); the first 1x1 only feeds it
    small = netmorph.apply_structure(model, {"blocks.1.b.0": 0}, example_inputs=x).eval()
    assert isinstance(small.blocks[1].a[0], Vanished) and isinstance(small.blocks[1].b[0], Vanished)
    assert isinstance(small.blocks[1].c[0], ConstantOutput)
    convs = 2 * 2 * 36 * (8 * 4 + 9 * 4 * 4 + 4 * 8)     # batch 2, 6x6: the block's 1x1, 3x3 and 1x1
    assert netmorph.count_flops(small, x) == netmorph.count_flops(model, x) - convs
    with torch.no_grad():                             # the block now adds what its BN makes of zeros
        h = model.stem(x)
        h = model.blocks[0](h)
        expected = model.fc(torch.relu(h + model.blocks[1].c[1](torch.zeros_like(h))).mean((2, 3)))
        assert torch.allclose(small(x), expected, atol=1e-6)
    # naming the first 1x1 at 0 as well says the same thing: the same network
    both = netmorph.apply_structure(model, {"blocks.1.a.0": 0, "blocks.1.b.0": 0}, example_inputs=x).eval()
    assert isinstance(both.blocks[1].a[0], Vanished) and isinstance(both.blocks[1].b[0], Vanished)
    assert isinstance(both.blocks[1].c[0], ConstantOutput)
    assert netmorph.count_flops(both, x) == netmorph.count_flops(model, x) - convs
    with torch.no_grad():
        assert torch.allclose(both(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="'blocks.1.a.0' cannot have width 0"):    # it still feeds the 3x3
        netmorph.apply_structure(model, {"blocks.1.a.0": 0}, example_inputs=x)
    # expansion costs the structure as it is built: the tower is gone at every omega
    learned = {"blocks.1.b.0": 0}
    grown = netmorph.expand(model, x, learned, netmorph.count_flops(model, x))
    assert grown["blocks.1.a.0"] == 0 and grown.omega > 1


def test_fresh_init_reinitializes_every_parameter():
    torch.manual_seed(0)
    model, x = resnet20(), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.bn1.weight.fill_(0.3)
    # the laws come from a freshly built reference; the model's own (trained) values do not leak in
    fresh = netmorph.apply_structure(model, {"layer1.0.conv1": 8}, init="fresh", example_inputs=x,
                                     init_reference=resnet20())
    assert torch.equal(fresh.bn1.weight, torch.ones(16))
    assert not torch.equal(fresh.conv1.weight, model.conv1.weight)
    assert fresh.layer1[0].conv1.out_channels == 8


def test_structure_errors_name_the_problem():
    model, x = resnet20(), torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="tied.*'layer1.0.conv2'|'layer1.0.conv2'.*tied"):
        netmorph.apply_structure(model, {"conv1": 8, "layer1.0.conv2": 12}, example_inputs=x)
    with pytest.raises(ValueError, match="cannot change width: reaches the model output"):
        netmorph.apply_structure(model, {"fc": 5}, example_inputs=x)
    with pytest.raises(ValueError, match="cannot have width 0"):
        netmorph.apply_structure(model, {"conv1": 0}, example_inputs=x)
    with pytest.raises(ValueError, match="does not have.*layer9"):
        netmorph.apply_structure(model, {"layer9.conv": 3}, example_inputs=x)
    with pytest.raises(ValueError, match="needs example_inputs"):
        netmorph.apply_structure(model, {"conv1": 8})
    with pytest.raises(ValueError, match="keep must be"):
        netmorph.apply_structure(model, {"conv1": 8}, keep="random", example_inputs=x)
    # a depthwise conv may be named: its width is its input's, so the stem conv narrows with it
    # (32 -> 16): 16 fewer of the stem's 3x3x3 filters, depthwise 3x3 filters and pointwise inputs
    dw = get_model("mobilenetv2")
    narrow = netmorph.apply_structure(dw, {"features.1.block.0.0": 16}, example_inputs=x)
    stem, depthwise, pointwise = narrow.features[0][0], narrow.features[1].block[0][0], narrow.features[1].block[1]
    assert (stem.out_channels, depthwise.in_channels, depthwise.out_channels, depthwise.groups) == (16, 16, 16, 16)
    assert (pointwise.in_channels, pointwise.out_channels) == (16, 16)
    assert netmorph.count_flops(dw, x) - netmorph.count_flops(narrow, x) == 2 * 32 * 32 * 16 * (27 + 9 + 16)


def test_a_saved_structure_rebuilds_the_pruned_model(tmp_path):
    torch.manual_seed(0)
    model, x = resnet20(), torch.randn(2, 3, 32, 32)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    kill(model, reg, 0.3)
    small = netmorph.prune(model, reg)
    reg.structure().save(tmp_path / "s.json")
    torch.save(small.state_dict(), tmp_path / "w.pt")
    loaded = netmorph.Structure.load(tmp_path / "s.json")
    assert loaded.input_shapes == [[2, 3, 32, 32]]
    rebuilt = netmorph.apply_structure(resnet20(), loaded)             # example inputs from the structure
    rebuilt.load_state_dict(torch.load(tmp_path / "w.pt"))
    assert torch.allclose(outputs(rebuilt, x), outputs(small, x), atol=1e-6)


def test_layers_reading_frozen_channels_keep_their_weights_in_place():
    """A layer after an op without a rule reads frozen channels: they must be copied in order."""
    from tests.graph.rules.test_unknown_and_exclude import Rolled
    torch.manual_seed(0)
    model, x = Rolled(), torch.randn(2, 3, 8, 8)
    wide = netmorph.apply_structure(model, {"c2": 12}, example_inputs=x)
    assert torch.equal(wide.c2.weight[:6], model.c2.weight)               # frozen inputs, same order
    back = netmorph.apply_structure(wide, {"c2": 6}, keep="first", example_inputs=x)
    assert torch.allclose(outputs(back, x), outputs(model, x), atol=1e-6)


def test_a_concat_into_a_grouped_conv_is_pruned_channel_by_channel_and_refused_by_width():
    """Found by tests/test_fuzz_graphs.py: two concat branches each feeding one group of a grouped conv
    share one channel group unevenly (each branch covers half of it). prune removes a dead half
    exactly; a width cannot say which half goes, so apply_structure refuses, naming the layer,
    instead of a ZeroDivisionError or a misleading 'tied' error."""
    from tests.fuzz_nets import Net, randomize_norms
    torch.manual_seed(0)
    model = Net([("concat", 2, 1), ("grouped", 1, 1)], stem=2).eval()
    randomize_norms(model, torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 8, 8)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    b = reg.graph.layers["blocks.0.b.0"].out
    reg.zero_channels(np.unique(b))                          # branch b dead: the grouped conv's second group
    with torch.no_grad():
        before = model(x)
    small = netmorph.prune(model, reg)
    with torch.no_grad():
        assert torch.allclose(small(x), before, atol=1e-5)
    assert netmorph.count_flops(small, x) == reg.cost() < netmorph.count_flops(model, x)
    learned = reg.structure()
    assert (learned["blocks.0.a.0"], learned["blocks.0.b.0"], learned["blocks.1.f.0"]) == (2, 0, 1)
    with pytest.raises(ValueError, match="'blocks.0.b.0' covers its group's channels unevenly"):
        netmorph.apply_structure(model, learned, example_inputs=x)
    with pytest.raises(ValueError, match="unevenly"):
        netmorph.apply_structure(model, {"blocks.1.f.0": 1}, example_inputs=x)
    same = netmorph.apply_structure(model, {"blocks.0.a.0": 2, "blocks.1.f.0": 2}, example_inputs=x)
    assert netmorph.count_flops(same, x) == netmorph.count_flops(model, x)
