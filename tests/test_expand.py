"""expand: the largest uniform multiplier of a learned structure that fits the budget."""
import pytest
import torch

import netmorph
from netmorph.costs import count_cost
from netmorph.expand import _scaled, widths_cost
from netmorph.models import get_model, resnet20
from netmorph.resize import group_targets
from tests.graph.rules.test_unknown_and_exclude import Rolled
from tests.test_prune import kill


def built_cost(model, x, resource):
    return count_cost(model, x, resource, "V100")


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
        named = group_targets(graph, reg.structure())
        learned = {g: named.get(g, grp.width) for g, grp in enumerate(graph.groups) if grp.frozen is None}
        # one step further (omega + 1e-6) no longer fits: omega is the largest that does
        assert widths_cost(graph, _scaled(learned, s.omega + 1e-6, round_to), resource, "V100") > budget
        changeable = [n for n, l in graph.layers.items() if graph.groups[graph.group_of[l.out[0]]].frozen is None]
        assert all(s[n] % round_to == 0 and s[n] >= round_to for n in changeable if reg.structure()[n] > 0)


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
