"""count_flops and the channel graph on torchvision's classification models (needs the vision extra)."""
import pytest
import torch

import netmorph
from netmorph.graph import build_graph
from tests.conftest import reference_flops

tvm = pytest.importorskip("torchvision.models", reason="torchvision not installed: pip install -e '.[vision]'")

# A sample spanning the families: residual, dense, depthwise, SE, channel shuffle, transformer.
MODELS = ["resnet18", "resnet50", "resnext50_32x4d", "densenet121", "mobilenet_v2", "mobilenet_v3_small",
          "efficientnet_b0", "shufflenet_v2_x0_5", "squeezenet1_1", "googlenet", "regnet_y_400mf",
          "vgg11_bn", "convnext_tiny", "vit_b_16", "swin_t", "mnasnet0_5", "alexnet"]


@pytest.mark.parametrize("name", MODELS)
def test_count_flops_matches_the_flop_counter(name):
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    model = getattr(tvm, name)(**kwargs)
    x = torch.randn(1, 3, 224, 224)
    ours, ref = netmorph.count_flops(model, x), reference_flops(model, x)
    assert abs(ours - ref) <= 0.01 * ref, (ours, ref)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0"])
def test_convolutional_models_have_changeable_groups_and_a_working_regularizer(name):
    model = getattr(tvm, name)()
    x = torch.randn(1, 3, 224, 224)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    changeable = [g for g in reg.graph.groups if g.frozen is None]
    assert len(changeable) >= 10
    assert reg.cost() == netmorph.count_flops(model, x)
    reg.loss().backward()
    assert sum(p.grad.abs().sum() for p in reg.source_parameters()) > 0
