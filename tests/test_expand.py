"""expand: the largest uniform multiplier of a learned structure that fits the budget."""
import pytest
import torch
from torch import nn

import netmorph
from netmorph.costs import count_cost
from netmorph.models import get_model, resnet20
from tests.conftest import reference_flops
from tests.graph.rules.test_unknown_and_exclude import Rolled
from tests.test_prune import kill


def built_cost(model, x, resource):
    """The cost of a built network counted without netmorph's channel graph where possible: FLOPs by
    torch's FlopCounterMode, size as the conv and linear weights; latency (no outside counter) from
    the graph of the built network itself."""
    if resource == "flops":
        return reference_flops(model, x)
    if resource == "size":
        return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    return count_cost(model, x, resource, "V100")


def widths_at(omega, learned, names, round_to):
    """The documented widths for multiplier omega: ``max(round_to, omega * O' rounded to a multiple of
    round_to)``, removed layers (0) staying at 0."""
    return {n: 0 if learned[n] == 0 else max(round_to, round(omega * learned[n] / round_to) * round_to)
            for n in names}


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "inception", "densenet", "vgg11", "senet"])
@pytest.mark.parametrize("resource", ["flops", "size", "latency"])
def test_expanded_structure_costs_what_the_built_network_costs_and_omega_is_maximal(name, resource):
    torch.manual_seed(0)
    model, x = get_model(name), torch.randn(1, 3, 32, 32)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    kill(model, reg, 0.5)
    budget = 0.6 * built_cost(model, x, resource)
    for round_to in (1, 8):
        s = netmorph.expand(model, x, reg.structure(), budget, resource=resource, round_to=round_to)
        built = netmorph.apply_structure(model, s, example_inputs=x)
        assert built_cost(built, x, resource) == pytest.approx(s.cost, rel=1e-9) and s.cost <= budget
        graph = netmorph.build_graph(model, x)
        changeable = [n for n, l in graph.layers.items() if graph.groups[graph.group_of[l.out[0]]].frozen is None]
        learned = reg.structure()
        assert {n: s[n] for n in changeable} == widths_at(s.omega, learned, changeable, round_to)
        # omega is the largest multiplier that fits: the widths only change where omega * O' / round_to
        # reaches the next half-integer of some layer; just past the first such point, the network built
        # at those widths costs more than the budget (and so, wider everywhere, do all larger omegas)
        grow = [n for n in changeable if learned[n] > 0]
        step = min((s[n] // round_to + 0.5) * round_to / learned[n] for n in grow)
        assert step >= s.omega * (1 - 1e-12)                     # (equal: omega sits on the half-integer)
        wider = widths_at(max(step, s.omega) * (1 + 1e-9), learned, changeable, round_to)
        assert all(wider[n] >= s[n] for n in changeable) and any(wider[n] > s[n] for n in changeable)
        assert built_cost(netmorph.apply_structure(model, wider, example_inputs=x), x, resource) > budget


def test_same_cost_budget_grows_the_learned_structure_beyond_omega_1():
    torch.manual_seed(0)
    model, x = resnet20(), torch.randn(1, 3, 32, 32)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    kill(model, reg, 0.5)
    s = netmorph.expand(model, x, reg.structure(), netmorph.count_flops(model, x))
    assert s.omega > 1.3
    assert s["fc"] == 10                                      # frozen: the classes stay
    assert netmorph.count_flops(netmorph.apply_structure(model, s, example_inputs=x), x) <= netmorph.count_flops(model, x)


def test_unreachable_budgets_are_refused_with_the_reason():
    rolled, x8 = Rolled(), torch.randn(1, 3, 8, 8)
    # c1 (3 -> 4) is frozen by torch.roll: 2 * 64 * 9 * 3 * 4 = 13,824 FLOPs nothing can remove
    with pytest.raises(ValueError, match="below the cost of the part of the network that cannot change.*13,824"):
        netmorph.expand(rolled, x8, {"c2": 6}, 10_000.0)
    model, x = resnet20(), torch.randn(1, 3, 32, 32)
    full = netmorph.count_flops(model, x)
    structure = {"conv1": 16}
    with pytest.raises(ValueError, match="smallest structure"):
        netmorph.expand(model, x, structure, 0.005 * full, round_to=16)
    with pytest.raises(ValueError, match="positive number"):
        netmorph.expand(model, x, structure, -1)
    with pytest.raises(ValueError, match="round_to"):
        netmorph.expand(model, x, structure, full, round_to=0)
