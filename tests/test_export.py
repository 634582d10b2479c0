"""Deployment: a pruned network exports to ONNX and runs in onnxruntime with PyTorch's outputs, and
``torch.export`` takes it too. Needs the ``onnx`` extra (in the test extra)."""
import pytest
import torch

import netmorph
from netmorph.export import check_onnx, export_onnx, export_program
from netmorph.graph.removed import ConstantOutput, Vanished
from netmorph.models import MODELS, get_model
from tests.test_branch_death import PoolBranch, pruned_exactly
from tests.test_prune import kill

pytest.importorskip("onnxruntime", reason="the onnx extra is part of the test extra: pip install -e '.[test]'")


def shape_of(name):
    return (1, 8, 8) if name == "tiny" else (3, 32, 32)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_built_in_model_exports_before_and_after_pruning_with_equal_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = get_model(name, in_channels=1) if name == "tiny" else get_model(name)
    x = torch.randn(2, *shape_of(name))
    reg = netmorph.GammaFlopsRegularizer(model, x[:1])
    assert check_onnx(model, export_onnx(model, x, tmp_path / "a.onnx"), torch.randn(3, *shape_of(name))) < 1e-4
    kill(model, reg, 0.4)
    small = netmorph.prune(model, reg)
    assert netmorph.count_flops(small, x[:1]) < netmorph.count_flops(model, x[:1])
    path = export_onnx(small, x, tmp_path / "b.onnx")
    for batch in (1, 5):                                          # the batch is dynamic
        assert check_onnx(small, path, torch.randn(batch, *shape_of(name))) < 1e-4


def test_a_network_with_removed_residual_branches_exports(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    small = netmorph.apply_structure(get_model("resnet20"), {"layer2.1.conv1": 0, "layer3.2.conv1": 0},
                                     example_inputs=x)
    assert isinstance(small.layer2[1].conv1, Vanished) and isinstance(small.layer2[1].conv2, ConstantOutput)
    path = export_onnx(small, x, tmp_path / "r.onnx")
    assert check_onnx(small, path, torch.randn(4, 3, 32, 32)) < 1e-4
    program = export_program(small, x)
    with torch.no_grad():
        assert torch.allclose(program.module()(x), small.eval()(x), atol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_a_dead_branch_before_an_upsample_or_a_pool_exports(mode, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    small, _ = pruned_exactly(PoolBranch(mode), x, ["p.0", "m.0"])
    path = export_onnx(small, x, tmp_path / "p.onnx")
    assert check_onnx(small, path, torch.randn(3, 3, 8, 8)) < 1e-4
    import onnx
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Resize" not in ops and "MaxPool" not in ops and "GlobalAveragePool" not in ops   # the dead branches are cut
    assert ops.count("Conv") == 3                                 # stem, the live branch, the head
    with torch.no_grad():
        assert torch.allclose(export_program(small, x).module()(x), small(x), atol=1e-5)
