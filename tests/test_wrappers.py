"""Models as training code hands them over: ``torch.compile``'d (``OptimizedModule``) and wrapped in
DistributedDataParallel. netmorph works on the module inside (same parameters, so the regularizer's
pull reaches the training); a sharded (FSDP) model is refused by name."""
import pytest
import torch
import torch.distributed as torch_dist
from torch import nn

import netmorph
from netmorph.models import resnet20
from tests.test_prune import kill


@pytest.fixture
def process_group(tmp_path):
    torch_dist.init_process_group("gloo", store=torch_dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    torch_dist.destroy_process_group()


def check_same_as_plain(wrapped, model, x):
    assert netmorph.count_flops(wrapped, x) == netmorph.count_flops(model, x)
    assert netmorph.count_params(wrapped) == netmorph.count_params(model)
    assert netmorph.explain(wrapped, x) == netmorph.explain(model, x)
    reg = netmorph.GammaFlopsRegularizer(wrapped, x)
    assert reg.model is model
    reg.loss().backward()                                         # the pull reaches the shared parameters
    assert model.bn1.weight.grad is not None and model.bn1.weight.grad.abs().sum() > 0
    kill(model, reg, 0.3)
    small = netmorph.prune(wrapped, reg)
    assert type(small) is type(model) and netmorph.count_flops(small, x) == reg.cost() < netmorph.count_flops(model, x)
    with torch.no_grad():
        assert torch.allclose(small.eval()(x), model.eval()(x), atol=1e-5)
    narrow = netmorph.apply_structure(wrapped, {"layer1.0.conv1": 8}, example_inputs=x)
    assert narrow.layer1[0].conv1.out_channels == 8


def test_a_compiled_model_is_read_through_to_the_module_it_compiles(one_thread):
    torch.manual_seed(0)
    model, x = resnet20().eval(), torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model)                               # never run here: nothing is compiled
    assert type(compiled).__name__ == "OptimizedModule"
    check_same_as_plain(compiled, model, x)


def test_a_ddp_wrapped_model_is_read_through_to_its_module(one_thread, process_group):
    torch.manual_seed(0)
    model, x = resnet20().eval(), torch.randn(2, 3, 32, 32)
    check_same_as_plain(nn.parallel.DistributedDataParallel(model), model, x)


def test_a_sharded_model_is_refused_by_name():
    class FullyShardedDataParallel(nn.Module):                    # stands in for torch's FSDP wrapper
        def __init__(self, m):
            super().__init__()
            self.module = m
    with pytest.raises(TypeError, match="sharded models"):
        netmorph.GammaFlopsRegularizer(FullyShardedDataParallel(resnet20()), torch.randn(1, 3, 32, 32))
