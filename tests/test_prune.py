"""prune: exact when dead channels carry zero, folds what they carry otherwise, removes dead branches."""
import numpy as np
import pytest
import torch
from torch import nn

import netmorph
from netmorph.graph.removed import ConstantOutput, RemovedNorm, Vanished
from netmorph.models import MODELS, get_model
from tests.conftest import train_with_prox
from tests.graph.rules.test_binary_cat import SE, TwoBranches
from tests.graph.rules.test_conv import Depthwise, Grouped
from tests.graph.rules.test_linear_reshape import ConvToLinear
from tests.graph.rules.test_pointwise_pool_reduce import ACTS, Reduce
from tests.graph.rules.test_unknown_and_exclude import Rolled


def kill(model, reg, fraction, seed=0):
    """Make a random ``fraction`` of the regularized channels exactly dead (sources zeroed)."""
    dead = (np.random.default_rng(seed).random(reg.graph.n_channels) < fraction) & reg.regularized
    reg.zero_channels(dead)
    return dead


def kill_and_prune_exactly(model, reg, x):
    """Make 30% of the regularized channels exactly dead, prune, and check the outputs stay (1e-5)."""
    kill(model, reg, 0.3)
    with torch.no_grad():
        before = model(x)
    small = netmorph.prune(model, reg).eval()
    with torch.no_grad():
        assert (small(x) - before).abs().max() <= 1e-5 * before.abs().max()
    return small


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(*x) if isinstance(x, tuple) else model(x)


def check_exact(model, x, reg_cls=netmorph.GammaFlopsRegularizer):
    before = outputs(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reg = reg_cls(model, x)
    small = netmorph.prune(model, reg)
    assert torch.allclose(outputs(small, x), before, atol=1e-5, rtol=1e-4)
    assert netmorph.count_flops(small, x) == reg.cost() == small.netmorph_report.flops_after
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())      # original untouched
    assert type(small) is type(model)
    return reg, small


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_reference_net_prunes_exactly_with_random_channels_killed(name):
    torch.manual_seed(0)
    model = get_model(name)
    x = torch.randn(2, 1, 8, 8) if name == "tiny" else torch.randn(2, 3, 32, 32)
    kill(model, netmorph.GammaFlopsRegularizer(model, x), 0.4)
    reg, small = check_exact(model, x)
    assert small.netmorph_report.flops_after < 0.8 * small.netmorph_report.flops_before
    for family in (netmorph.GammaModelSizeRegularizer, netmorph.GammaLatencyRegularizer):
        # the kept network's size / latency equal what the regularizer predicted
        assert family(small, x).cost() == pytest.approx(family(model, x).cost())


RULE_NETS = [lambda: Grouped(), lambda: Depthwise(), lambda: SE(), lambda: Reduce("mean"), lambda: Rolled(),
             lambda: Reduce("keepdim")] + [lambda how=how: TwoBranches(how) for how in ("add", "sub", "iadd", "cat")] \
    + [lambda how=how: ConvToLinear(how) for how in ("flatten", "view", "reshape", "squeeze")] \
    + [lambda act=act: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), act, nn.Conv2d(6, 4, 1),
                                     nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
       for act in ACTS if not isinstance(act, (nn.Sigmoid, nn.Hardsigmoid))]


@pytest.mark.parametrize("factory", RULE_NETS, ids=range(len(RULE_NETS)))
@pytest.mark.parametrize("seed", [0, 1])
def test_each_rule_prunes_exactly(factory, seed):
    torch.manual_seed(seed)
    model = factory()
    x = torch.randn(2, 3, 8, 8) if not isinstance(model, ConvToLinear) else torch.randn(2, 3, 4, 4)
    kill(model, netmorph.GammaFlopsRegularizer(model, x), 0.5, seed=seed)
    check_exact(model, x)


def test_group_lasso_prunes_exactly_without_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 16, 5))
    with torch.no_grad():
        model[0].weight[[1, 4, 5]] = 0
        model[0].bias[[1, 4, 5]] = 0
        model[2].weight[[0, 2]] = 0
        model[2].bias[[0, 2]] = 0
    reg, small = check_exact(model, torch.randn(2, 3, 4, 4), netmorph.GroupLassoFlopsRegularizer)
    assert dict(reg.structure()) == {"0": 5, "2": 4, "5": 5}
    assert small[5].in_features == 4 * 16


def test_dead_residual_branch_becomes_the_skip_connection():
    torch.manual_seed(0)
    model, x = get_model("resnet20"), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.layer2[1].bn1.weight.zero_()
        model.layer2[1].bn1.bias.zero_()
    reg, small = check_exact(model, x)
    assert isinstance(small.layer2[1].conv1, Vanished) and isinstance(small.layer2[1].conv2, ConstantOutput)
    assert isinstance(small.layer2[1].bn1, RemovedNorm) and small.layer2[1].bn1.num_features == 0
    assert reg.structure()["layer2.1.conv1"] == 0
    # the two convs of the block are gone: 2 * 4,718,592 / 2 (batch 2 doubles them) FLOPs fewer
    assert small.netmorph_report.flops_before - small.netmorph_report.flops_after == 2 * 2 * 4_718_592


def test_dead_tower_of_a_concat_dies_back_to_where_it_forked():
    torch.manual_seed(0)
    model, x = get_model("inception"), torch.randn(2, 3, 32, 32)
    block = model.block1 if hasattr(model, "block1") else model.blocks[0]
    last = block.branch3[1][1]                           # the BN after the 3x3 conv of the 1x1 -> 3x3 tower
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    reg, small = check_exact(model, x)
    tower = small.block1.branch3
    assert isinstance(tower[1][0], Vanished) and isinstance(tower[0][0], Vanished)   # both convs gone
    assert reg.structure()["block1.branch3.0.0"] == 0


def test_plain_chain_keeps_one_channel_rather_than_vanishing(x8):
    from tests.conftest import Chain
    model = Chain()
    with torch.no_grad():
        model.bn1.weight.zero_()
        model.bn1.bias.zero_()
    reg, small = check_exact(model, x8)
    assert small.conv1.out_channels == 1 and isinstance(small.conv2, nn.Conv2d)


def test_trained_network_folds_the_constants_and_reports_the_real_change():
    """Dead channels whose beta is not zero: folded exactly through 1x1 convs and linear layers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    x = torch.randn(4, 3, 8, 8)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    with torch.no_grad():
        model[1].weight[[0, 3]] = 0
        model[1].bias[[0, 3]] = torch.tensor([0.7, 0.2])       # relu(beta) = 0.7, 0.2 reach conv 3
        model[4].weight[[1]] = 0
        model[4].bias[[1]] = 0.5                                # relu -> pool -> linear gets 0.5
    before = outputs(model, x)
    small = netmorph.prune(model, reg)
    assert small[3].in_channels == 6 and small[8].in_features == 5
    assert torch.allclose(outputs(small, x), before, atol=1e-5)   # exact: 1x1 conv + BN, linear bias
    assert small.netmorph_report.max_abs_change < 1e-5


def test_regularize_train_prune_reports_the_real_output_change():
    """Trained with proximal steps, every dead channel is silenced (gamma and beta 0), so pruning is
    exact up to float rounding; the report gives the change measured on the outputs."""
    torch.manual_seed(0)
    model = get_model("tiny", num_classes=4)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 4, (64,))
    reg = netmorph.GammaFlopsRegularizer(model, x[:8])
    train_with_prox(model, reg, x, y, 80, 30)
    assert reg.cost() < 0.8 * netmorph.count_flops(model, x[:8])           # channels died
    small = netmorph.prune(model, reg)
    before = outputs(model, x[:8])
    real = (outputs(small, x[:8]) - before).abs().max().item()
    assert small.netmorph_report.max_abs_change == pytest.approx(real, rel=1e-6, abs=1e-9)
    assert real <= 1e-5 * before.abs().max().item()                       # exact up to float rounding
    assert small.netmorph_report.max_rel_change <= 1e-5
    assert netmorph.count_flops(small, x[:8]) == reg.cost()
    small.train()                                                          # and it still trains:
    opt = torch.optim.SGD(small.parameters(), lr=0.05)
    losses = []
    for step in range(5):
        loss = nn.functional.cross_entropy(small(x), y)
        opt.zero_grad()
        loss.backward()
        if step == 0:                                                      # gradients reach every parameter
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in small.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0], losses


def test_pruned_model_keeps_dtype_attributes_and_can_be_pruned_again():
    torch.manual_seed(0)
    model, x = get_model("resnet20").double(), torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model.my_attribute = "kept"
    reg = netmorph.GammaFlopsRegularizer(model, x)
    kill(model, reg, 0.3)
    with torch.no_grad():
        model.layer1[0].bn1.weight.zero_()
        model.layer1[0].bn1.bias.zero_()
    small = netmorph.prune(model, reg)
    assert small.my_attribute == "kept" and next(small.parameters()).dtype == torch.float64
    reg2 = netmorph.GammaFlopsRegularizer(small, x)
    assert reg2.cost() == reg.cost()
    assert torch.allclose(outputs(small, x), outputs(model, x), atol=1e-8)
    kill(small, reg2, 0.3, seed=1)
    smaller = netmorph.prune(small, reg2)
    assert torch.allclose(outputs(smaller, x), outputs(small, x), atol=1e-8)
    assert netmorph.count_flops(smaller, x) == reg2.cost() < reg.cost()


def test_prune_refuses_a_regularizer_of_another_model(x8):
    from tests.conftest import Chain
    with pytest.raises(ValueError, match="different model object"):
        netmorph.prune(Chain(), netmorph.GammaFlopsRegularizer(Chain(), x8))


def test_a_pruned_model_with_a_new_bias_saves_and_loads_back(tmp_path):
    """Dead channels feeding a bias-free conv with no BatchNorm after it: prune gives that conv a
    bias; ``netmorph.load`` rebuilds the pruned network from structure.json + model.pt exactly."""
    torch.manual_seed(0)
    build = lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),  # noqa: E731
                                  nn.Conv2d(8, 6, 1, bias=False), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    model, x = build(), torch.randn(4, 3, 8, 8)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    with torch.no_grad():
        model[1].weight[[0, 3]] = 0
        model[1].bias[[0, 3]] = torch.tensor([0.7, 0.2])
    small = netmorph.prune(model, reg)
    assert small[3].bias is not None and model[3].bias is None
    reg.structure().save(tmp_path / "structure.json")
    torch.save(small.state_dict(), tmp_path / "model.pt")
    plain = netmorph.apply_structure(build(), reg.structure())
    with pytest.raises(RuntimeError, match="Unexpected key.*3.bias"):
        plain.load_state_dict(torch.load(tmp_path / "model.pt"))
    loaded = netmorph.load(build(), tmp_path)
    assert torch.equal(outputs(loaded, x), outputs(small, x))
    assert torch.allclose(outputs(loaded, x), outputs(model, x), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="nowhere.structure.json does not exist"):
        netmorph.load(build(), tmp_path / "nowhere")
