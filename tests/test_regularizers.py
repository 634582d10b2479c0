"""Regularizers: every family on every reference net, cost = cost of the kept network, proximal step."""
import numpy as np
import pytest
import torch
from torch import nn

import netmorph
from netmorph.models import MODELS, get_model
from netmorph.regularizers import _prox_max_norm
from tests.conftest import Chain, set_gammas, train_with_prox

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



def bn_outputs(model, names, inputs):
    """The outputs of the named BatchNorms on ``inputs``, in train mode and then in eval mode."""
    seen = {n: [] for n in names}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, a, out, n=n: seen[n].append(out.detach()))
             for n in names]
    with torch.no_grad():
        model.train()
        model(inputs)
        model.eval()
        model(inputs)
    for h in hooks:
        h.remove()
    return seen



def test_channels_the_proximal_steps_kill_are_silenced_and_prune_exactly(one_thread):
    """After training with proximal steps, every channel alive() drops has gamma AND beta exactly 0,
    so its BatchNorm emits exactly 0 on any input (train and eval mode), and pruning the trained
    network changes its outputs only by float rounding."""
    torch.manual_seed(0)
    model = get_model("tiny", num_classes=4, width=0.5)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 4, (32,))
    reg = netmorph.GammaFlopsRegularizer(model, x[:8])                 # gamma_threshold 1e-3
    train_with_prox(model, reg, x, y, 60, 20)
    dead = ~reg.alive()
    assert dead.sum() >= 10                                            # the run killed channels
    probe = torch.randn(16, 1, 8, 8)
    seen = bn_outputs(model, list(reg.graph.bn_sources), probe)
    checked = 0
    for name, (_, channels) in reg.graph.bn_sources.items():
        bn, rows = model.get_submodule(name), torch.as_tensor(dead[channels])
        if not rows.any():
            continue
        assert torch.equal(bn.weight[rows], torch.zeros(int(rows.sum())))      # gamma 0 ...
        assert torch.equal(bn.bias[rows], torch.zeros(int(rows.sum())))        # ... and beta 0: silenced
        for out in seen[name]:                                                 # train mode, eval mode
            assert torch.equal(out[:, rows], torch.zeros_like(out[:, rows]))
        checked += int(rows.sum())
    assert checked == dead.sum()
    before = model(probe).detach()                                     # eval mode (bn_outputs ends there)
    small = netmorph.prune(model, reg).eval()
    assert small.netmorph_report.channels_removed == dead.sum()
    with torch.no_grad():
        after = small(probe)
    assert (after - before).abs().max() <= 1e-5 * before.abs().max()
    assert small.netmorph_report.max_rel_change <= 1e-5


def test_a_gamma_at_or_under_the_threshold_is_silenced_even_when_not_exactly_zero(x8):
    """Dead means "not above gamma_threshold" (what alive(), cost() and prune use), not only exactly 0:
    such channels are silenced too, or pruning them would drop the varying signal gamma * x_hat and the
    constant beta they still carry. The strongest channel of a layer whose channels all died is kept
    by alive() and left as it is."""
    model = Chain(a=8)
    set_gammas(model.bn1, [1, 5e-4, 1, 1e-3, 1, 1, 2e-3, 1])
    with torch.no_grad():
        model.bn1.bias.fill_(0.3)
    reg = netmorph.GammaFlopsRegularizer(model, x8)                    # gamma_threshold 1e-3
    reg.proximal_step(lr=1e-12, strength=1e-12)                        # a shrink far below any gamma
    assert model.bn1.weight[[1, 3]].tolist() == [0, 0] and model.bn1.bias[[1, 3]].tolist() == [0, 0]
    keep = [0, 2, 4, 5, 6, 7]
    assert torch.allclose(model.bn1.weight[keep], torch.tensor([1, 1, 1, 1, 2e-3, 1]), rtol=1e-6)
    assert torch.equal(model.bn1.bias[keep], torch.full((6,), 0.3))
    out = bn_outputs(model, ["bn1"], torch.randn(4, 3, 8, 8))["bn1"]
    assert all(torch.equal(o[:, [1, 3]], torch.zeros_like(o[:, [1, 3]])) for o in out)
    assert all((o[:, keep].abs().amax((0, 2, 3)) > 0).all() for o in out)
    # every channel of the layer at or under the threshold: alive() keeps the strongest (index 5)
    model = Chain(a=8)
    set_gammas(model.bn1, [5e-4, 1e-4, 0, 8e-4, 2e-4, 9e-4, 3e-4, 7e-4])
    with torch.no_grad():
        model.bn1.bias.fill_(0.3)
    reg = netmorph.GammaFlopsRegularizer(model, x8)
    reg.proximal_step(lr=1e-12, strength=1e-12)
    assert reg.structure()["conv1"] == 1 and reg.alive()[reg.graph.layers["conv1"].out].nonzero()[0].tolist() == [5]
    assert model.bn1.weight[5].item() == pytest.approx(9e-4) and model.bn1.bias[5].item() == pytest.approx(0.3)
    others = [0, 1, 2, 3, 4, 6, 7]
    assert not model.bn1.weight[others].any() and not model.bn1.bias[others].any()


def test_channels_whose_gammas_the_user_froze_are_not_regularized_and_explain_says_so():
    # fine-tuning a pretrained backbone often freezes its first layers: no training can shrink them
    torch.manual_seed(0)
    model, x = get_model("resnet20").eval(), torch.randn(1, 3, 32, 32)
    before = netmorph.GammaFlopsRegularizer(model, x)
    stem = before.graph.group_of[before.graph.layers["conv1"].out]
    inner = before.graph.group_of[before.graph.layers["layer2.0.conv1"].out]
    assert before.regularized[before.graph.groups[stem[0]].channels].all()
    for p in list(model.bn1.parameters()) + [p for n, p in model.named_parameters() if n.startswith("layer1.") and "bn2" in n]:
        p.requires_grad_(False)                                    # the stem group's every gamma
    model.layer2[0].bn1.weight.requires_grad_(False)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    assert not reg.regularized[reg.graph.groups[stem[0]].channels].any()
    assert reg.untrainable[reg.graph.groups[stem[0]].channels].all()
    assert not reg.regularized[reg.graph.groups[inner[0]].channels].any()
    others = before.regularized.copy()
    others[reg.graph.groups[stem[0]].channels] = others[reg.graph.groups[inner[0]].channels] = False
    assert (reg.regularized == others).all()                      # nothing else changed
    assert "requires_grad=False (frozen by you)" in netmorph.explain(model, x)
    # one frozen member is enough: the prox would otherwise write the gammas the user froze
    fresh = get_model("resnet20").eval()
    fresh.layer1[1].bn2.weight.requires_grad_(False)
    reg = netmorph.GammaFlopsRegularizer(fresh, x)
    assert not reg.regularized[reg.graph.groups[stem[0]].channels].any()
