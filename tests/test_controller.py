"""The strength controller lands the alive cost in [0.98, 1.02] x the shrink target, and a channel
silenced behind a ReLU, which can never come back by itself, is brought back when the network has
shrunk below the band."""
import dataclasses

import numpy as np
import pytest
import torch

import netmorph
from netmorph.models import tiny_cnn
from netmorph.morph import BAND, in_band, regularize, revive
from netmorph.train import Recipe, fit
from tests.conftest import Chain
from tests.test_morph import problem


def test_a_silenced_channel_behind_a_relu_gets_no_gradient_until_revived():
    torch.manual_seed(0)
    model, x = Chain(8, 4), torch.randn(4, 3, 8, 8)
    reg = netmorph.GammaFlopsRegularizer(model, x[:1])
    ch = reg.graph.layers["conv1"].out                       # graph channel ids of conv1's outputs, in order
    reg.zero_channels(ch[:2])                                # silenced: gamma and beta 0
    model(x).square().sum().backward()
    assert torch.all(model.bn1.weight.grad[:2] == 0) and torch.all(model.bn1.bias.grad[:2] == 0)
    assert torch.all(model.bn1.weight.grad[2:] != 0)
    # proximal steps never bring it back either: it is dead for good unless revived
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        (model(x) - 1).square().mean().backward()
        opt.step()
        reg.proximal_step(0.1, 1e-9)
    assert torch.isfinite(model.bn1.weight).all() and torch.all(model.bn1.weight[2:] != 0)
    assert torch.all(model.bn1.weight[:2] == 0)
    reg.revive_channels([ch[0]], 0.01)
    assert model.bn1.weight[0].item() == pytest.approx(0.01) and model.bn1.bias[0].item() == 0
    model.zero_grad()
    model(x).square().sum().backward()
    assert model.bn1.weight.grad[0] != 0 and model.bn1.weight.grad[1] == 0
    assert reg.alive()[ch[0]] and not reg.alive()[ch[1]]


def test_revive_brings_back_the_last_to_die_until_the_cost_is_in_the_band():
    torch.manual_seed(0)
    model, x = Chain(16, 4), torch.randn(1, 3, 8, 8)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    full = reg.cost()
    per_channel = full / 16                                  # conv1 row + BN + conv2 column, equal for all
    target = full - 4 * per_channel                          # 12 of 16 channels
    ch = reg.graph.layers["conv1"].out
    reg.zero_channels(ch[:10])                               # 6 alive: far below the band
    death = np.full(reg.graph.n_channels, -1)
    death[ch[:10]] = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]          # channels 7, 8, 9 died last
    last = np.zeros(reg.graph.n_channels)
    last[ch[:10]] = np.linspace(0.1, 1.0, 10)               # ... and 9 had the largest value of those
    back = revive(reg, target, death, last)
    assert back == [int(ch[i]) for i in (9, 8, 7, 6, 5, 4)]  # latest death first, then largest value
    assert in_band(reg.cost(), target)
    assert torch.all(model.bn1.weight[4:10] > 0) and torch.all(model.bn1.weight[:4] == 0)


@pytest.mark.parametrize("warm", [False, True])
def test_the_controller_lands_in_the_band_from_scratch_and_from_trained_weights(warm):
    torch.manual_seed(0)
    train, val = problem()
    model = tiny_cnn(num_classes=4, width=0.5)
    example = train[0][:1]
    recipe = Recipe(epochs=12, batch_size=64, lr=0.05, crop_padding=0, flip=False)
    if warm:
        fit(model, train, val, recipe, log=lambda s: None)
    full = netmorph.count_flops(model, example)
    lines = []
    structure, cost, info = regularize(model, train, val, example, 0.5 * full, recipe, log=lines.append)
    assert info.reached_target and BAND[0] * 0.5 * full <= cost <= BAND[1] * 0.5 * full, lines
    # every epoch after the approach (the first 60%) ends in the band: the cost stays where it landed
    assert all(in_band(c, 0.5 * full) for c in info.cost_history[8:]), lines
    # and never falls much below the path on the way: no crash to a fraction of the target
    assert min(info.cost_history) >= 0.9 * 0.5 * full, lines
    rebuilt = netmorph.apply_structure(model, structure, example_inputs=example)
    assert netmorph.count_flops(rebuilt, example) == cost


def test_the_learning_rate_is_held_while_the_structure_is_learned():
    from netmorph.train import learning_rate
    r = Recipe(epochs=10, lr=0.1, warmup=0.1)
    held = dataclasses.replace(r, schedule="constant")
    assert [learning_rate(s, 100, held) for s in (0, 9, 10, 50, 99)] == pytest.approx([0.01, 0.1, 0.1, 0.1, 0.1])
    assert learning_rate(99, 100, r) < 1e-3                 # the one-cycle schedule decays to ~0
    with pytest.raises(ValueError, match="schedule must be"):
        learning_rate(0, 10, dataclasses.replace(r, schedule="cosine"))


def test_a_strength_a_million_times_too_large_still_moves_the_network_only_down_to_the_floor():
    torch.manual_seed(0)
    model, x = Chain(16, 4), torch.randn(1, 3, 8, 8)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    with torch.no_grad():
        model.bn1.weight.copy_(torch.linspace(0.1, 1.6, 16))   # distinct values: one dies at a time
    full = reg.cost()
    floor = full - 3.5 * full / 16                             # room for three of conv1's 16 channels to die
    reg.proximal_step(0.1, 1e6 / full, floor=floor)            # a full step would kill every channel
    assert floor <= reg.cost() < full
    assert int((model.bn1.weight == 0).sum()) == 3             # the three smallest, and only them
    assert torch.all(model.bn1.weight[:3] == 0) and torch.all(model.bn1.weight[3:] > 0)


def test_from_trained_weights_a_first_strength_ten_times_short_is_caught_up_within_the_epochs():
    """The CIFAR warm start in miniature: few regularized epochs, trained weights resisting the pull,
    a first strength far too weak; the checks within each epoch ramp it up in time."""
    torch.manual_seed(0)
    train, val = problem()
    model = tiny_cnn(num_classes=4, width=0.5)
    example = train[0][:1]
    recipe = Recipe(epochs=4, batch_size=64, lr=0.05, crop_padding=0, flip=False)
    fit(model, train, val, dataclasses.replace(recipe, epochs=8), log=lambda s: None)
    full = netmorph.count_flops(model, example)
    lines = []
    structure, cost, info = regularize(model, train, val, example, 0.5 * full, recipe, strength=1e-3,
                                       log=lines.append)
    assert info.reached_target and in_band(cost, 0.5 * full), lines
    assert info.strength_history[1] > 10 * info.strength_history[0], lines   # it had to be ramped
