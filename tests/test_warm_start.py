"""Warm start: regularize from trained weights, prune exactly, widen keeping every alive weight,
fine-tune; and widening a pruned network whose structure names branches it already removed."""
import pytest
import torch

import netmorph
from netmorph.models import tiny_cnn
from netmorph.morph import make_regularizer, morph, next_network
from netmorph.train import Recipe, evaluate, fit
from tests.test_morph import RECIPE, problem


def test_widening_a_pruned_network_keeps_removed_branches_removed():
    tvm = pytest.importorskip("torchvision.models", reason="torchvision not installed: pip install -e '.[vision]'")
    torch.manual_seed(0)
    model, x = tvm.resnet18(), torch.randn(1, 3, 64, 64)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    with torch.no_grad():                                  # layer2.1's residual branch dies entirely
        model.layer2[1].bn1.weight.zero_()
        model.layer2[1].bn1.bias.zero_()
    learned = reg.structure()
    assert learned["layer2.1.conv1"] == 0
    small = netmorph.prune(model, reg)
    grown = netmorph.expand(model, x, learned, netmorph.count_flops(model, x))
    assert grown["layer2.1.conv1"] == 0 and grown.omega > 1
    wide = netmorph.apply_structure(small, grown, example_inputs=x)   # the pruned network, widened
    assert netmorph.count_flops(wide, x) == grown.cost == netmorph.count_flops(
        netmorph.apply_structure(model, grown, example_inputs=x), x)
    with pytest.raises(ValueError, match="'layer2.1.conv1' was removed from this model.*give it width 0"):
        netmorph.apply_structure(small, {"layer2.1.conv1": 8}, example_inputs=x)


def test_warm_round_keeps_every_alive_weight_and_draws_new_channels_the_models_way():
    torch.manual_seed(0)
    train, val = problem()
    build = lambda: tiny_cnn(num_classes=4, width=0.5)          # noqa: E731
    example = train[0][:1]
    model = build()
    fit(model, train, val, RECIPE, log=lambda s: None)
    reg = make_regularizer(model, example)
    # kill a third of the first layer's channels exactly, as a finished regularized round would leave them
    first = reg.graph.groups[int(reg.graph.group_of[reg.graph.layers["features.0.0"].out[0]])]
    dead = torch.zeros(reg.graph.n_channels, dtype=torch.bool)
    dead[first.channels[: first.width // 3]] = True
    reg.zero_channels(dead.numpy())
    learned = reg.structure()
    grown = netmorph.expand(model, example, learned, netmorph.count_flops(model, example))

    class Done:                                                # what a finished round hands on
        expanded, state = grown, {k: v.clone() for k, v in model.state_dict().items()}
    warm = next_network(build(), Done, example, 1, build(), "keep")
    assert netmorph.count_flops(warm, example) == grown.cost
    alive = learned["features.0.0"]
    old = model.features[0][0].weight[first.width // 3:]      # the alive channels, in order
    new = warm.features[0][0].weight
    assert new.shape[0] == grown["features.0.0"] > alive
    assert torch.equal(new[:alive], old)                        # every alive weight kept
    fresh_rows = new[alive:]                                    # new ones: Kaiming fan-out like tiny_cnn's own
    fan_out = new.shape[0] * new.shape[2] * new.shape[3]
    assert abs(fresh_rows.std().item() / (2 / fan_out) ** 0.5 - 1) < 0.35
    # ... and read by nothing yet: the widened network computes exactly what the pruned one does
    nxt = warm.features[1][0].weight
    assert torch.all(nxt[:, alive:] == 0) and nxt[:, :alive].abs().sum() > 0
    pruned = netmorph.prune(model, reg)
    warm.eval(), pruned.eval()
    with torch.no_grad():
        assert torch.allclose(warm(train[0][:64]), pruned(train[0][:64]), atol=1e-5)


def test_warm_start_morph_starts_from_the_trained_weights_and_lands_at_the_budget():
    torch.manual_seed(0)
    train, val = problem()
    build = lambda: tiny_cnn(num_classes=4, width=0.5)          # noqa: E731
    example = train[0][:1]
    trained = build()
    fit(trained, train, val, RECIPE, log=lambda s: None)
    start_acc = evaluate(trained, *val)
    full = netmorph.count_flops(trained, example)
    fine = Recipe(epochs=2, batch_size=64, lr=0.02, crop_padding=0, flip=False)
    out = morph(build, train, val, example, budget="50%", shrink="40%", recipe=RECIPE, final_recipe=fine,
                init="keep", start_state=trained.state_dict(), log=lambda s: None)
    assert 0.45 * full <= out["final_cost"] <= 0.5 * full
    assert netmorph.count_flops(out["model"], example) == out["final_cost"]
    assert start_acc > 0.35                                     # well above chance (0.25) on this problem


def test_warm_start_regularizes_the_trained_weights(monkeypatch):
    import netmorph.morph as M
    torch.manual_seed(0)
    train, val = problem(n=256)
    build = lambda: tiny_cnn(num_classes=4, width=0.5)          # noqa: E731
    trained = build()
    fit(trained, train, val, Recipe(epochs=1, batch_size=64, lr=0.05, crop_padding=0, flip=False), log=lambda s: None)
    seen = []
    real = M.regularize
    def spy(model, *args, **kwargs):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)
    monkeypatch.setattr(M, "regularize", spy)
    one = Recipe(epochs=1, batch_size=64, lr=0.05, crop_padding=0, flip=False)
    for init, start in (("keep", trained.state_dict()), ("fresh", None)):
        morph(build, train, val, train[0][:1], budget="50%", recipe=one, init=init, start_state=start,
              log=lambda s: None)
    warm, cold = seen
    assert all(torch.equal(warm[k], v) for k, v in trained.state_dict().items())
    assert not torch.equal(cold["features.0.0.weight"], trained.state_dict()["features.0.0.weight"])
    with pytest.raises(ValueError, match="start_state .* goes with init='keep'"):
        morph(build, train, val, train[0][:1], start_state=trained.state_dict(), recipe=RECIPE)
