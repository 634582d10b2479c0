"""Regularizers: every family on every reference net, cost = cost of the kept network, proximal step."""
import numpy as np
import pytest
import torch
from torch import nn

import netmorph
from netmorph.models import MODELS, get_model
from netmorph.regularizers import _prox_max_norm
from tests.conftest import Chain, set_gammas

FAMILIES = [netmorph.GammaFlopsRegularizer, netmorph.GammaModelSizeRegularizer,
            netmorph.GammaLatencyRegularizer, netmorph.GroupLassoFlopsRegularizer,
            netmorph.GroupLassoModelSizeRegularizer, netmorph.GroupLassoLatencyRegularizer]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("family", FAMILIES, ids=lambda c: c.__name__)
def test_every_regularizer_builds_and_backpropagates_on_every_reference_net(name, family):
    torch.manual_seed(0)
    model = get_model(name)
    x = torch.randn(1, 1, 8, 8) if name == "tiny" else torch.randn(1, 3, 32, 32)
    reg = family(model, x)
    loss = reg.loss()
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in reg.source_parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    if reg.resource == "flops" and reg.family == "gamma":
        assert reg.cost() == netmorph.count_flops(model, x)    # gammas start at 1: nothing dead yet


def test_cost_equals_the_count_of_the_network_that_keeps_the_alive_channels(x8):
    model = Chain(a=8)
    set_gammas(model.bn1, [0, 1, 0, 1, 1, 0, 1, 1])
    for family, count in [(netmorph.GammaFlopsRegularizer, netmorph.count_flops),
                          (netmorph.GammaModelSizeRegularizer, lambda m, x: sum(
                              p.numel() for n, p in m.named_parameters() if n.endswith("weight") and p.dim() > 1))]:
        assert family(model, x8).cost() == count(Chain(a=5), x8)


def test_gamma_regularizer_without_batchnorm_suggests_group_lasso():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(ValueError, match="GroupLassoFlopsRegularizer instead"):
        netmorph.GammaFlopsRegularizer(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="GroupLassoLatencyRegularizer instead"):
        netmorph.GammaLatencyRegularizer(model, torch.randn(1, 3, 8, 8))


def test_a_fully_dead_group_keeps_its_strongest_channel(x8):
    model = Chain()
    set_gammas(model.bn1, [0, 0, 0, 5e-4, 0, 0, 0, 0])
    reg = netmorph.GammaFlopsRegularizer(model, x8)
    assert reg.structure()["conv1"] == 1
    assert reg.alive()[reg.graph.layers["conv1"].out].nonzero()[0].tolist() == [3]


def test_prox_of_the_max_norm_clips_members_to_a_common_level():
    v = np.array([3.0, 1.0, 0.5, 2.0, 0.1])
    index = np.array([0, 0, 0, 1, 1])
    # channel 0: t = 1.5 -> theta with (3 - th) = 1.5 -> th = 1.5 ; channel 1: sum 2.1 <= t = 3 -> zeros
    out = _prox_max_norm(v, index, np.array([1.5, 3.0]))
    assert np.allclose(out, [1.5, 1.0, 0.5, 0.0, 0.0])
    # t large enough to reach the second member: (3 - th) + (1 - th) = 3 -> th = 0.5
    assert np.allclose(_prox_max_norm(v, index, np.array([3.0, 0.0])), [0.5, 0.5, 0.5, 2.0, 0.1])


STRENGTH = 30.0


def _train(proximal: bool, steps=80):
    torch.manual_seed(0)
    model = get_model("tiny", num_classes=4)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 4, (64,))
    reg = netmorph.GammaFlopsRegularizer(model, x[:1], gamma_threshold=1e-4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.0)
    strength, lr = STRENGTH / reg.cost(), 0.05
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        if not proximal:
            loss = loss + strength * reg.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if proximal:
            reg.proximal_step(lr, strength)
    gammas = torch.cat([p.detach().abs() for p in reg.source_parameters()])
    return reg, gammas


def test_proximal_step_makes_dead_channels_exactly_zero_where_plain_sgd_hovers():
    reg_plain, g_plain = _train(proximal=False)
    reg_prox, g_prox = _train(proximal=True)
    assert (g_plain == 0).sum() == 0                        # plain L1 + SGD never reaches zero ...
    hovering = ((g_plain > 1e-4) & (g_plain < 0.02)).sum().item()
    assert hovering > 20                                    # ... it oscillates just above the threshold
    assert (g_prox == 0).sum() > 20                         # the proximal step makes them exactly 0
    assert reg_prox.cost() < 0.9 * reg_plain.cost()
