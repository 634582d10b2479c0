"""Costs: FLOPs against PyTorch's counter on every reference net, size, latency, hardware."""
import numpy as np
import pytest
import torch

import netmorph
from netmorph.costs import HARDWARE, evaluate, get_hardware
from netmorph.graph import build_graph
from netmorph.models import MODELS, get_model
from tests.conftest import Chain, reference_flops


def _input(name, batch=2):
    return torch.randn(batch, 1, 8, 8) if name == "tiny" else torch.randn(batch, 3, 32, 32)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_count_flops_matches_the_flop_counter_on_every_reference_net(name):
    model, x = get_model(name), _input(name)
    ours, ref = netmorph.count_flops(model, x), reference_flops(model, x)
    assert abs(ours - ref) <= 0.01 * ref
    assert ours == ref          # in fact exact: same convention, same terms


def test_resnet20_is_81_6_mflops_at_batch_1():
    assert netmorph.count_flops(get_model("resnet20"), torch.randn(1, 3, 32, 32)) == 81_626_368


def test_count_params_counts_every_parameter_once():
    model = get_model("resnet20")
    assert netmorph.count_params(model) == 272_474
    shared = torch.nn.Sequential(model.fc, model.fc)
    assert netmorph.count_params(shared) == 650


def test_model_size_counts_conv_and_linear_weights(x8):
    model = Chain()
    reg = netmorph.GammaModelSizeRegularizer(model, x8)
    assert reg.cost() == 9 * 3 * 8 + 1 * 8 * 4                     # kernel * in * out, no biases
    with torch.no_grad():
        model.bn1.weight[:2] = 0
    assert reg.cost() == 9 * 3 * 6 + 6 * 4


def test_latency_roofline_by_hand(x8):
    model = Chain()
    graph = build_graph(model, x8)
    alive = np.ones(graph.n_channels, dtype=bool)
    # ops: conv1, bn1, relu, conv2.  Elements moved (activations + weights), float32:
    #   conv1: in 3*64 + out 8*64 + w 9*3*8 = 920     bn1: 512 + 512     relu: 512 + 512
    #   conv2: in 8*64 + out 4*64 + w 8*4 = 800
    elements = 920 + 1024 + 1024 + 800
    assert evaluate(graph, alive, "latency", "MEMORY_LATENCY") == pytest.approx(4 * elements)
    assert evaluate(graph, alive, "latency", "FLOP_LATENCY") == pytest.approx(27648 + 4096 + 0, rel=1e-9)
    hw = netmorph.Hardware(peak_gflops=10, bandwidth_gbs=2)
    # per op max(flops / 10, bytes / 2) in ns
    expected = max(27648 / 10, 4 * 920 / 2) + 4 * 1024 / 2 * 2 + max(4096 / 10, 4 * 800 / 2)
    assert evaluate(graph, alive, "latency", hw) == pytest.approx(expected)


def test_latency_regularizer_cost_equals_flops_on_the_flop_profile(x8):
    model = Chain()
    with torch.no_grad():
        model.bn1.weight[:3] = 0
    lat = netmorph.GammaLatencyRegularizer(model, x8, hardware="FLOP_LATENCY")
    flops = netmorph.GammaFlopsRegularizer(model, x8)
    assert lat.cost() == pytest.approx(flops.cost())
    assert lat.loss().item() == pytest.approx(flops.loss().item())


def test_hardware_table_and_errors():
    assert set(HARDWARE) == {"K80", "P4", "T4", "P100", "V100", "TPUv2", "FLOP_LATENCY", "MEMORY_LATENCY"}
    assert get_hardware("v100").peak_gflops == 125000 and get_hardware("P4").bandwidth_gbs == 192
    with pytest.raises(ValueError, match="unknown hardware 'H100'.*K80.*TPUv2"):
        netmorph.GammaLatencyRegularizer(Chain(), torch.randn(1, 3, 8, 8), hardware="H100")
    with pytest.raises(ValueError, match="bandwidth_gbs must be a positive number"):
        netmorph.Hardware(peak_gflops=100, bandwidth_gbs=0)
    with pytest.raises(ValueError, match="only used by latency"):
        netmorph.GammaFlopsRegularizer(Chain(), torch.randn(1, 3, 8, 8), hardware="V100")
