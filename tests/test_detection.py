"""torchvision detection models (vision extra): recorded from a list of images, their convolutional
channels changeable except the prediction layers, and pruned exactly: the heads' raw outputs (before
box decoding and non-maximum suppression) and the final boxes stay as they were.

Random-init detectors are built small (128-pixel images, few proposals) so every head runs in eval
mode: Faster R-CNN's and SSD's class scores clear their thresholds on random weights, so their box
and mask heads see proposals; RetinaNet's focal-loss prior emits no box, so only its heads' outputs
are compared."""
import pytest
import torch
import torch.utils._pytree as pytree

import netmorph
from netmorph.graph import build_graph
from tests.conftest import reference_flops
from tests.test_prune import kill

tvd = pytest.importorskip("torchvision.models.detection", reason="torchvision not installed: pip install -e '.[vision]'")

SMALL = dict(min_size=128, max_size=128)
RCNN = dict(SMALL, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50, box_detections_per_img=20)
BUILD = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": RCNN,
    "ssdlite320_mobilenet_v3_large": {},
    "retinanet_resnet50_fpn": SMALL,
    "maskrcnn_resnet50_fpn": RCNN,
}
#: the modules whose raw outputs are compared (before decoding and NMS)
HEADS = ("rpn.head", "roi_heads.box_predictor", "roi_heads.mask_predictor", "head.classification_head",
         "head.regression_head")


def detector(name, **extra):
    torch.manual_seed(0)
    model = getattr(tvd, name)(weights=None, weights_backbone=None, num_classes=5, **BUILD[name], **extra)
    size = 320 if name.startswith("ssdlite") else 128
    return model.eval(), ([torch.rand(3, size, size)],)


def run(model, x):
    """The heads' raw outputs and the final detections."""
    got = {}
    names = dict(model.named_modules())
    hooks = [names[n].register_forward_hook(lambda m, a, out, n=n: got.__setitem__(n, out)) for n in HEADS if n in names]
    with torch.no_grad():
        out = model(*x)
    for h in hooks:
        h.remove()
    return got, out


def assert_same(before, after):
    (heads_b, out_b), (heads_a, out_a) = before, after
    assert heads_b.keys() == heads_a.keys() and heads_b
    for name in heads_b:
        leaves = list(zip(pytree.tree_leaves(heads_b[name]), pytree.tree_leaves(heads_a[name]), strict=True))
        scale = max(b.abs().max() for b, _ in leaves)              # per head: its feature levels differ in scale
        for b, a in leaves:
            assert a.shape == b.shape and (a - b).abs().max() <= 1e-5 * scale, name
    for b, a in zip(out_b, out_a, strict=True):
        assert b.keys() == a.keys()
        for key in b:
            assert torch.allclose(a[key].float(), b[key].float(), atol=1e-3), key


def frozen_layers(graph):
    return sorted(n for n, l in graph.layers.items() if graph.groups[int(graph.group_of[l.out[0]])].frozen)


@pytest.mark.parametrize("name", sorted(BUILD))
def test_a_detector_records_from_a_list_of_images_and_prunes_exactly(name, one_thread):
    model, x = detector(name)
    assert netmorph.count_flops(model, x) == reference_flops(model, *x)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    # only the layers that emit the predictions (class scores, box deltas, masks) are frozen
    for layer in frozen_layers(reg.graph):
        assert any(k in layer for k in ("cls_logits", "bbox_pred", "cls_score", "mask_fcn_logits", "bbox_reg",
                                        "classification_head.module_list", "regression_head.module_list")), layer
    kill(model, reg, 0.3)
    before = run(model, x)
    if name.startswith(("fasterrcnn", "ssd", "mask")):
        assert len(before[1][0]["boxes"]) > 0                        # the box (and mask) heads ran on proposals
    small = netmorph.prune(model, reg).eval()
    assert_same(before, run(small, x))
    assert small.netmorph_report.flops_after == reg.cost() == reference_flops(small, *x) < reference_flops(model, *x)


def calibrate(model, x):
    """Pretrained-like FrozenBatchNorm2d buffers: each one's mean and variance set to its input's on
    ``x`` (in one pass, so every layer sees normalized inputs), its shift random: activations of the
    random network then keep their scale, as a trained network's do."""
    from torchvision.ops import FrozenBatchNorm2d
    g = torch.Generator().manual_seed(0)

    def stats(module, args):
        module.running_mean.copy_(args[0].mean((0, 2, 3)))
        module.running_var.copy_(args[0].var((0, 2, 3)) + 1e-3)
        module.bias.copy_(0.1 * torch.randn(len(module.bias), generator=g))
    hooks = [m.register_forward_pre_hook(stats) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    with torch.no_grad():
        model(*x)
    for h in hooks:
        h.remove()


def test_a_pretrained_style_detector_with_frozen_batchnorm_and_frozen_early_layers():
    # what a user has after loading COCO weights: FrozenBatchNorm2d everywhere in the backbone and its
    # first layers frozen (requires_grad=False); built here without downloads
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor
    from torchvision.ops import FrozenBatchNorm2d
    torch.manual_seed(0)
    backbone = _mobilenet_extractor(mobilenet_v3_large(norm_layer=FrozenBatchNorm2d), True, 3)
    model = tvd.FasterRCNN(backbone, num_classes=5, rpn_anchor_generator=tvd.anchor_utils.AnchorGenerator(
        ((32, 64, 128),) * 3, ((0.5, 1.0, 2.0),) * 3), **RCNN).eval()
    x = ([torch.rand(3, 128, 128)],)
    calibrate(model, x)
    assert netmorph.count_flops(model, x) == reference_flops(model, *x)
    reg = netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)          # dead = exactly zero weights
    graph = reg.graph
    untrained = [n for n, l in graph.layers.items() if not l.module.weight.requires_grad]
    assert untrained and all(not reg.regularized[graph.layers[n].out].any() for n in untrained)
    assert reg.regularized.sum() > 0
    kill(model, reg, 0.3)
    before = run(model, x)
    small = netmorph.prune(model, reg).eval()
    assert_same(before, run(small, x))
    assert small.netmorph_report.flops_after == reg.cost() < netmorph.count_flops(model, x)


def test_example_inputs_that_are_not_tensors_are_refused_by_name():
    model, _ = detector("fasterrcnn_mobilenet_v3_large_320_fpn")
    with pytest.raises(TypeError, match=r"\(\[image\],\)"):
        build_graph(model, ([],))
    with pytest.raises(TypeError, match="list or dict of tensors"):
        build_graph(model, (["not a tensor"],))
