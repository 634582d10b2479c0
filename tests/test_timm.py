"""timm's convolutional families, zero configuration: small variants with random weights (nothing is
downloaded). The norm layers timm builds them from (BatchNormAct2d: an nn.BatchNorm2d subclass whose
forward calls F.batch_norm, then its activation) are read through the functional norm rule
(src/netmorph/graph/rules/functional_norm.py)."""
import numpy as np
import pytest
import torch

import netmorph
from tests.conftest import reference_flops
from tests.test_prune import kill_and_prune_exactly

timm = pytest.importorskip("timm", reason="timm is in the test extra: pip install -e '.[test]'")

MODELS = ["efficientnet_lite0", "mobilenetv3_small_050", "regnetx_002", "repvgg_a0", "dpn48b", "fbnetc_100",
          "mobilevit_xxs", "darknet17", "ghostnet_050", "resnet18d", "mnasnet_small", "dla34",
          "tf_mobilenetv3_small_075", "lcnet_050"]
#: share of the channels that carry a regularizer, at least; DPN splits its dual paths at constant
#: positions (``x[:, :num_1x1_c]``, ``x[:, num_1x1_c:]``), which pruning cannot move, so most of its
#: channels stay. (GhostNet's ``x[:, :out]`` keeps every channel: the identity, narrowing only.)
COVERAGE = {"dpn48b": 0.05, "ghostnet_050": 0.5, "tf_mobilenetv3_small_075": 0.5}


@pytest.mark.parametrize("name", MODELS)
def test_a_timm_cnn_gets_gamma_sources_and_prunes_exactly(name, one_thread):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    assert netmorph.count_flops(model, x) == reference_flops(model, x)
    assert reg.regularized.sum() > COVERAGE.get(name, 0.1) * reg.graph.n_channels
    loss = reg.loss()
    loss.backward()
    # every regularized channel pulls on a gamma: on one of its members (the max over tied BatchNorms)
    pulled = np.zeros(reg.graph.n_channels)
    for bn, (rows, cls) in reg.graph.bn_sources.items():
        grad = model.get_submodule(bn).weight.grad
        if grad is not None:
            np.add.at(pulled, cls, grad[torch.as_tensor(rows)].abs().numpy())
    assert (pulled[reg.regularized] > 0).all()
    small = kill_and_prune_exactly(model, reg, x)
    assert netmorph.count_flops(small, x) == reg.cost() < 0.97 * netmorph.count_flops(model, x)


def test_convnext_without_batchnorm_prunes_its_mlp_widths_with_group_lasso(one_thread):
    """ConvNeXt normalizes with LayerNorm2d over the channels (which mixes them: frozen), so what
    changes is each block's MLP hidden width, read by weight norms."""
    torch.manual_seed(0)
    model, x = timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval(), torch.randn(1, 3, 64, 64)
    reg = netmorph.GroupLassoFlopsRegularizer(model, x)
    assert netmorph.count_flops(model, x) == reference_flops(model, x)
    hidden = [g for g in reg.graph.groups if g.frozen is None]
    assert len(hidden) == 2 + 2 + 6 + 2 and all(p.endswith("mlp.fc1") for g in hidden for p in g.producers)
    small = kill_and_prune_exactly(model, reg, x)
    assert netmorph.count_flops(small, x) == reg.cost() == reference_flops(small, x) < 0.9 * netmorph.count_flops(model, x)
