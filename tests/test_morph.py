"""The MorphNet loop: budgets and shrink targets, the strength controller, one full round."""
import pytest
import torch
from torch import nn

import netmorph
from netmorph.models import get_model, tiny_cnn
from netmorph.morph import absolute, morph, regularize
from netmorph.train import Recipe


def problem(seed=0, n=1024):
    """A learnable 4-class problem on 8x8 single-channel images (labels from a fixed linear map)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.flatten(1) @ torch.randn(64, 4, generator=g)).argmax(1)
    return (x[:3 * n // 4], y[:3 * n // 4]), (x[3 * n // 4:], y[3 * n // 4:])


RECIPE = Recipe(epochs=8, batch_size=64, lr=0.05, crop_padding=0, flip=False)


def test_budget_and_shrink_accept_percentages_fractions_and_absolute_numbers():
    assert absolute("50%", 1000, "budget") == 500 and absolute(0.5, 1000, "budget") == 500
    assert absolute("150%", 1000, "budget") == 1500 and absolute(2e6, 1000, "budget") == 2e6
    for bad in ("0%", "-5%", 0, -1, "fast", float("nan")):
        with pytest.raises(ValueError, match="budget must be"):
            absolute(bad, 1000, "budget")


def test_strength_controller_reaches_the_shrink_target_without_a_given_strength():
    torch.manual_seed(0)
    train, val = problem()
    model = tiny_cnn(num_classes=4, width=0.5)
    full = netmorph.count_flops(model, train[0][:1])
    structure, cost, info = regularize(model, train, val, train[0][:1], 0.5 * full, RECIPE, log=lambda s: None)
    assert info.reached_target and cost <= 0.5 * full * 1.02
    assert info.strength_history[1] > info.strength_history[0]       # it had to push harder at first
    rebuilt = netmorph.apply_structure(model, structure, example_inputs=train[0][:1])
    assert netmorph.count_flops(rebuilt, train[0][:1]) == cost


def test_one_round_of_morph_ends_at_the_budget():
    torch.manual_seed(0)
    train, val = problem()
    build = lambda: tiny_cnn(num_classes=4, width=0.5)          # noqa: E731
    example = train[0][:1]
    full = netmorph.count_flops(build(), example)
    out = morph(build, train, val, example, budget="100%", shrink="50%", recipe=RECIPE,
                final_recipe=Recipe(epochs=2, batch_size=64, lr=0.05, crop_padding=0, flip=False), log=lambda s: None)
    assert out["final_cost"] <= full and out["final_cost"] >= 0.9 * full
    assert out["rounds"][0].expanded.omega > 1
    assert netmorph.count_flops(out["model"], example) == out["final_cost"]
    with pytest.raises(ValueError, match="rounds must be"):
        morph(build, train, val, example, rounds=0)


def test_interrupted_two_round_morph_resumes_to_the_uninterrupted_result(tmp_path):
    from netmorph.train import Interrupted
    train, val = problem()
    build = lambda: tiny_cnn(num_classes=4, width=0.5)          # noqa: E731
    example = train[0][:1]
    recipe = Recipe(epochs=3, batch_size=64, lr=0.05, crop_padding=0, flip=False)
    kw = dict(budget="100%", shrink="60%", rounds=2, recipe=recipe, log=lambda s: None)
    straight = morph(build, train, val, example, **kw)
    calls = {"n": 0}

    def stop():                          # Ctrl-C in the middle of round 2 (each round: 3 epochs x 12 steps)
        calls["n"] += 1
        return calls["n"] == 52
    path = tmp_path / "state.pt"
    with pytest.raises(Interrupted):
        morph(build, train, val, example, checkpoint_path=path, stop=stop, **kw)
    state = torch.load(path, weights_only=True)
    assert len(state["rounds"]) == 1 and state["stage"] == "regularize 1" and state["train"]["position"]
    steps = []
    resumed = morph(build, train, val, example, checkpoint_path=path, on_batch=lambda i, n, loss: steps.append(i),
                    **kw)
    # it continues where it stopped: the rest of round 2 (2 x 3 epochs x 12 steps, less the 52 done), then the
    # final 3 epochs; nothing is trained twice
    assert len(steps) == (2 * 36 - 52) + 36
    assert len(straight["rounds"]) == len(resumed["rounds"]) == 2                 # rounds=2, none lost or repeated
    for a, b in zip(straight["rounds"], resumed["rounds"]):
        assert len(a.cost_history) == len(b.cost_history) == 3                    # one entry per epoch
        assert dict(a.learned) == dict(b.learned) and a.cost_history == b.cost_history
        assert a.expanded.cost == b.expanded.cost and a.expanded.omega == b.expanded.omega
    assert [h["val_acc"] for h in straight["final_history"]] == [h["val_acc"] for h in resumed["final_history"]]
    assert straight["final_cost"] == resumed["final_cost"]


@pytest.mark.parametrize("stop_at", [20, 40])            # mid-regularization, mid-final training (2 x 12 steps each)
def test_a_model_with_dropout_resumes_to_the_uninterrupted_result(tmp_path, stop_at):
    """Dropout draws from torch's global generator: the checkpoint carries its state, so a new process
    (here: the global generator moved on in between) continues with the same masks."""
    from torch import nn

    from netmorph.train import Interrupted
    train, val = problem()
    build = lambda: nn.Sequential(tiny_cnn(num_classes=4, width=0.5), nn.Dropout(0.3))   # noqa: E731
    example = train[0][:1]
    recipe = Recipe(epochs=2, batch_size=64, lr=0.05, crop_padding=0, flip=False)
    kw = dict(budget="100%", shrink="60%", recipe=recipe, log=lambda s: None)
    straight = morph(build, train, val, example, **kw)
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == stop_at
    path = tmp_path / "state.pt"
    with pytest.raises(Interrupted):
        morph(build, train, val, example, checkpoint_path=path, stop=stop, **kw)
    torch.rand(1000)                                       # another process: the global generator elsewhere
    resumed = morph(build, train, val, example, checkpoint_path=path, **kw)
    assert straight["rounds"][0].cost_history == resumed["rounds"][0].cost_history
    assert [h["val_acc"] for h in straight["final_history"]] == [h["val_acc"] for h in resumed["final_history"]]
    for (k, a), b in zip(straight["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(a, b), k


def test_morph_keeps_a_group_no_width_can_describe_whole_and_still_ends_at_the_budget():
    """Two concat inputs, each feeding one half of a grouped conv, cover their channel group unevenly:
    a width cannot say which of its channels stay, so apply_structure would refuse any change of it.
    The MorphNet loop leaves that group out of the regularizer (and says so) instead of learning a
    structure it cannot build; the rest of the network still shrinks and expands to the budget."""
    from tests.fuzz_nets import Net
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(768, 3, 8, 8, generator=g)
    y = (x.flatten(1) @ torch.randn(192, 3, generator=g)).argmax(1)
    train, val = (x[:576], y[:576]), (x[576:], y[576:])
    build = lambda: Net([("concat", 2, 1), ("grouped", 8, 3), ("conv", 12, 3)], stem=6)    # noqa: E731
    model, example = build(), x[:1]
    graph = netmorph.build_graph(model, example)
    uneven = graph.uneven()
    assert list(uneven.values()) == ["blocks.0.a.0"]
    held = graph.groups[next(iter(uneven))].channels
    assert "changeable channel by channel only" in netmorph.explain(model, example)
    logs = []
    out = morph(build, train, val, example, budget="100%", shrink="50%", recipe=RECIPE,
                final_recipe=Recipe(epochs=1, batch_size=64, lr=0.05, crop_padding=0, flip=False), log=logs.append)
    assert any("keeping the channel group of 'blocks.0.a.0' whole" in line for line in logs)
    learned = out["rounds"][0].learned
    assert learned["blocks.0.a.0"] == 2 and learned["blocks.0.b.0"] == 2           # the held group, whole
    assert sum(learned.values()) < sum(layer.width for layer in graph.layers.values())   # the rest shrank
    assert netmorph.count_flops(out["model"], example) == out["final_cost"] <= netmorph.count_flops(model, example)
    assert len(held) == graph.groups[next(iter(uneven))].width


def test_expand_counts_a_pinned_group_at_its_width_in_the_smallest_structure():
    """(Found by review.) The smallest structure keeps a group no width describes at its width, so
    a budget under it is refused, and one just above it is met, never exceeded."""
    from netmorph.expand import cost_floor
    from tests.fuzz_nets import Net
    torch.manual_seed(0)
    model, x = Net([("concat", 2, 1), ("grouped", 8, 3), ("conv", 12, 3)], stem=6).eval(), torch.randn(1, 3, 8, 8)
    graph = netmorph.build_graph(model, x)
    full = {n: layer.width for n, layer in graph.layers.items()}
    _, smallest = cost_floor(graph, widths={g: grp.width for g, grp in enumerate(graph.groups) if grp.frozen is None})
    with pytest.raises(ValueError, match="below the smallest structure"):
        netmorph.expand(model, x, full, budget=0.99 * smallest)
    out = netmorph.expand(model, x, full, budget=1.01 * smallest)
    assert smallest <= out.cost <= 1.01 * smallest and (out["blocks.0.a.0"], out["blocks.0.b.0"]) == (2, 2)
    assert netmorph.count_flops(netmorph.apply_structure(model, out, example_inputs=x), x) == out.cost


def test_make_regularizer_takes_weight_norms_when_the_gammas_reach_little():
    # a MetaFormer block: GroupNorm over all channels (one group) mixes them, so its gammas prove
    # nothing; the MLP hidden width is reachable by weight norms only
    class MetaBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.norm = nn.GroupNorm(1, 16)
            self.fc1, self.fc2 = nn.Conv2d(16, 64, 1), nn.Conv2d(64, 16, 1)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            x = self.stem(x)
            x = x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))
            return self.head(x.mean((2, 3)))
    from netmorph.morph import make_regularizer
    x = torch.randn(1, 3, 8, 8)
    reg = make_regularizer(MetaBlock(), x)
    assert reg.family == "weight" and reg.regularized.sum() >= 64           # the MLP hidden width at least
    assert make_regularizer(get_model("resnet20"), torch.randn(1, 3, 32, 32)).family == "gamma"
