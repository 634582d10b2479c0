"""The channel graph, count_flops and prune on torchvision's classification models (vision extra).

``benchmarks/torchvision_zoo.py`` runs the same check on all 80 models and reports timings.
"""
import pytest
import torch

import netmorph
from netmorph.graph import supported_ops
from tests.conftest import reference_flops
from tests.test_prune import kill, kill_and_prune_exactly

tvm = pytest.importorskip("torchvision.models", reason="torchvision not installed: pip install -e '.[vision]'")

# One or two of every family: plain, residual, grouped, dense, depthwise + SE, channel shuffle,
# inception concat, fire modules, VGG with and without BN, and the transformers (hidden width approximate).
MODELS = ["alexnet", "resnet18", "resnet50", "resnext50_32x4d", "densenet121", "mobilenet_v2",
          "mobilenet_v3_small", "efficientnet_b0", "mnasnet0_5", "shufflenet_v2_x0_5", "squeezenet1_1",
          "googlenet", "inception_v3", "regnet_y_400mf", "vgg11", "vgg11_bn", "convnext_tiny", "swin_t",
          "vit_b_32", "maxvit_t"]


def build(name):
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = tvm.get_model(name, **kwargs).eval()
    with torch.no_grad():                   # zero-initialized heads (ViT) would make every output 0
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.02)
    x = torch.randn(1, 3, 299 if name == "inception_v3" else 224, 299 if name == "inception_v3" else 224)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    family = netmorph.GammaFlopsRegularizer if has_bn else netmorph.GroupLassoFlopsRegularizer
    return model, x, family


@pytest.mark.parametrize("name", MODELS)
def test_random_channels_killed_prune_exactly_with_fewer_flops(name):
    model, x, family = build(name)
    assert netmorph.count_flops(model, x) == reference_flops(model, x)             # exactly, as the README says
    reg = family(model, x, **({} if family is netmorph.GammaFlopsRegularizer else {"threshold": 0.0}))
    assert reg.regularized.sum() > 0
    # ConvNeXt's stage widths (LayerNorm over the channels) are approximate: killed too, prune keeps them by
    # default (the ViT's and Swin's hidden widths are frozen: nn.MultiheadAttention unsplit, window views;
    # MaxViT's are BatchNorm-regularized, where no gamma reaches a LayerNorm's channels)
    approx = reg.graph.approximate_mask() & reg.regularized
    assert approx.any() == (name == "convnext_tiny")
    dead = kill(model, reg, 0.3)
    with torch.no_grad():
        before = model(x)
    small = netmorph.prune(model, reg)
    with torch.no_grad():
        after = small(x)
    assert before.abs().max() > 0
    assert torch.allclose(after, before, rtol=1e-3, atol=1e-5 * before.abs().max().item())
    report = small.netmorph_report
    assert report.approximate_kept == int((dead & approx).sum())
    # the cost the graph predicts for the alive channels is what torch's own counter finds in the pruned network
    if not approx.any():
        assert report.flops_after == reg.cost() == netmorph.count_flops(small, x) == reference_flops(small, x)
    else:                                           # with approximate=True, every dead channel goes
        assert report.flops_after == netmorph.count_flops(small, x) == reference_flops(small, x) > reg.cost()
        rough = netmorph.prune(model, reg, approximate=True)
        assert rough.netmorph_report.flops_after == reg.cost() == reference_flops(rough, x)
    assert report.flops_after < report.flops_before


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0"])
def test_regularizer_backpropagates_on_the_zoo(name):
    model, x, family = build(name)
    reg = family(model, x)
    reg.loss().backward()
    assert sum(p.grad.abs().sum() for p in reg.source_parameters()) > 0


def test_tas_on_resnet50_drops_whole_bottlenecks_and_derives_what_argmax_tas_computes():
    from netmorph.graph.removed import ConstantOutput, Vanished
    torch.manual_seed(0)
    model, x = tvm.resnet50().eval(), torch.randn(1, 3, 64, 64)
    full = netmorph.count_flops(model, x)
    tas = netmorph.TAS(model, x, 0.5 * full)
    assert [len(s.blocks) for s in tas.stages] == [3, 4, 6, 3]             # every block after a stage's first
    with torch.no_grad():                                                  # full widths, depth 1 everywhere
        for a in tas.alphas:
            a.zero_()[-1] = 100
        for b in tas.betas:
            b.zero_()[0] = 100
    derived = tas.derive_model().eval()
    block = derived.layer3[4]
    assert isinstance(block.conv1, Vanished) and isinstance(block.conv2, Vanished)
    assert isinstance(block.conv3, ConstantOutput)
    assert tas.flops() == netmorph.count_flops(derived, x) == pytest.approx(tas.expected_flops().item(), rel=1e-12)
    assert tas.flops() < 0.4 * full
    tas.mode = "argmax"
    inputs = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tas(inputs), derived(inputs), atol=1e-5)


@pytest.mark.parametrize("shift", [True, False])
def test_a_backbone_with_frozen_batchnorm_prunes_exactly_by_weight_norms(shift, one_thread):
    """Detection and segmentation backbones load pretrained weights into torchvision's
    FrozenBatchNorm2d (buffers, no parameters): it passes channels through and narrows with them. A
    dead channel stays zero through it only where its shift is 0; elsewhere it would emit a constant
    a 3x3 conv cannot absorb exactly, so those channels are left alone (not regularized)."""
    from torchvision.ops.misc import FrozenBatchNorm2d
    torch.manual_seed(0)
    model = tvm.resnet18(num_classes=10, norm_layer=FrozenBatchNorm2d).eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if shift:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
    x = torch.randn(1, 3, 64, 64)
    assert "FrozenBatchNorm2d" in supported_ops()
    reg = netmorph.GroupLassoFlopsRegularizer(model, x)
    assert netmorph.count_flops(model, x) == reference_flops(model, x)
    assert reg.regularized.mean() < 0.05 if shift else reg.regularized.mean() > 0.9
    if shift:
        reasons = set(reg.graph.ungated["weight"].values())
        assert any("without passing a layer whose weights could zero it" in r for r in reasons)
        return
    small = kill_and_prune_exactly(model, reg, x)
    assert type(small.layer1[0].bn1) is FrozenBatchNorm2d
    assert len(small.layer1[0].bn1.weight) == small.layer1[0].conv1.out_channels < 64
    assert netmorph.count_flops(small, x) == reg.cost() == reference_flops(small, x)


SEGMENTATION = ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50"]


def segmentation(name):
    torch.manual_seed(0)
    model = getattr(tvm.segmentation, name)(weights=None, weights_backbone=None, num_classes=5,
                                            **({"aux_loss": True} if name.startswith(("deeplab", "fcn")) else {}))
    return model.eval(), torch.randn(1, 3, 96, 96)


def dict_outputs(model, x):
    with torch.no_grad():
        return {k: v.clone() for k, v in model(x).items()}


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_models_keep_their_output_dict_and_prune_exactly(name):
    model, x = segmentation(name)
    assert netmorph.count_flops(model, x) == reference_flops(model, x)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    assert reg.regularized.mean() > 0.5                       # most of the network is changeable
    kill(model, reg, 0.3)
    before = dict_outputs(model, x)
    small = netmorph.prune(model, reg).eval()
    after = dict_outputs(small, x)
    assert after.keys() == before.keys() and len(before) == (1 if name.startswith("lraspp") else 2)
    for key, value in before.items():
        assert after[key].shape == value.shape
        assert (after[key] - value).abs().max() <= 1e-5 * value.abs().max(), key
    assert small.netmorph_report.flops_after == reg.cost() == reference_flops(small, x) < reference_flops(model, x)


def test_a_dead_aspp_pooling_branch_disappears_before_its_upsample():
    # DeepLabV3's ASPP pooling branch: pool -> 1x1 conv -> BN -> ReLU -> interpolate -> concat. With its
    # BN's gammas and betas zero the branch emits zeros; prune removes it with the conv that only fed it
    model, x = segmentation("deeplabv3_mobilenet_v3_large")
    pooling = model.classifier[0].convs[-1]
    with torch.no_grad():
        pooling[2].weight.zero_()
        pooling[2].bias.zero_()
    reg = netmorph.GammaFlopsRegularizer(model, x)
    before = dict_outputs(model, x)
    small = netmorph.prune(model, reg).eval()
    after = dict_outputs(small, x)
    for key, value in before.items():
        assert (after[key] - value).abs().max() <= 1e-5 * value.abs().max(), key
    gone = small.classifier[0].convs[-1]
    assert not any(isinstance(m, torch.nn.Conv2d) for m in gone.modules())          # the branch's conv is gone
    project = small.classifier[0].project[0]
    assert project.in_channels == model.classifier[0].project[0].in_channels - pooling[1].out_channels
