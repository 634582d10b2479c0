"""Property-based: random networks built from the supported ops (``tests/fuzz_nets.py``) either get a
channel graph or a clear refusal; with random channels and whole branches killed, ``prune`` is exact
and costs what the regularizer predicted; ``apply_structure`` to an expanded structure costs what
``expand`` predicted. A few examples here; ``benchmarks/fuzz_soak.py`` runs thousands."""
import os

import numpy as np
import pytest
import torch

pytest.importorskip("hypothesis", reason="the fuzzed-graph tests need hypothesis (pip install 'netmorph[test]')")
from hypothesis import HealthCheck, example, given, settings

import netmorph
from netmorph.graph import GraphRecordError
from tests.fuzz_nets import Net, networks, randomize_norms

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
# CI: 25 fixed networks per property; benchmarks/fuzz_soak.py sets NETMORPH_FUZZ_EXAMPLES for a random soak
settings.register_profile("soak", max_examples=int(os.environ.get("NETMORPH_FUZZ_EXAMPLES", "0") or 0) or 2000,
                          deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("soak" if os.environ.get("NETMORPH_FUZZ_EXAMPLES") else "ci")


def build(case):
    spec, stem, seed = case
    torch.manual_seed(seed)
    model = Net(spec, stem=stem).eval()
    randomize_norms(model, torch.Generator().manual_seed(seed))
    return model, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 1)), seed


def regularizer_or_refusal(model, x):
    """The Gamma regularizer. Every op the generator uses is supported and the stem has BatchNorm, so
    a refusal is a failure too (it must still be a sentence, not a traceback from deep inside)."""
    try:
        return netmorph.GammaFlopsRegularizer(model, x)
    except (ValueError, GraphRecordError) as exc:
        assert len(str(exc)) > 20, exc                      # a sentence, not a bare key
        raise AssertionError(f"a network of supported ops was refused: {model.spec}: {exc}") from None


def kill_random(reg, seed: int) -> np.ndarray:
    """Whole groups (branches) with probability 0.25, else each channel with probability 0.4."""
    rng = np.random.default_rng(seed)
    dead = np.zeros(reg.graph.n_channels, dtype=bool)
    for group in reg.graph.groups:
        ch = np.asarray(group.channels)
        if group.frozen is not None or not reg.regularized[ch].all():
            continue
        dead[ch] = True if rng.random() < 0.25 else rng.random(len(ch)) < 0.4
    reg.zero_channels(dead & reg.regularized)
    return dead


@given(networks)
@example(([("concat", 2, 1), ("grouped", 1, 1)], 2, 0))    # found by the other test: uneven group, see resize._width
@example(([("concat", 1, 1), ("maxpool", 1, 1)], 2, 35))    # found by the soak: every concat input dead, then a pool
@example(([("grouped", 3, 1), ("depthwise", 2, 1)], 2, 1))    # found by the soak: depthwise, 2 channels per group
def test_random_networks_prune_exactly_at_the_predicted_cost(case):
    model, x, seed = build(case)
    reg = regularizer_or_refusal(model, x)
    kill_random(reg, seed)
    with torch.no_grad():
        before = model(x)
    predicted = reg.cost()
    small = netmorph.prune(model, reg)
    with torch.no_grad():
        after = small.eval()(x)
    scale = before.abs().max().item() + 1e-6
    assert torch.allclose(after, before, atol=1e-5 * scale, rtol=1e-5), (model.spec, (after - before).abs().max())
    assert netmorph.count_flops(small, x) == predicted, model.spec


@given(networks)
@example(([("conv", 1, 1)], 6, 2))            # found by this test: expand's cost 29719.999999999996 for 29720
@example(([("chunk_add", 1, 1)], 4, 0))        # found by the soak: expand widened a group a chunk interleaves
@example(([("split_cat", 1, 1), ("split_cat", 1, 1), ("grouped", 1, 1)], 2, 0))    # the soak: a frozen uneven group
@example(([("concat", 1, 1), ("grouped", 1, 1)], 2, 6))    # found by the soak: expand sized a pinned group's layers
def test_random_structures_apply_at_the_cost_expand_predicted(case):
    model, x, seed = build(case)
    reg = regularizer_or_refusal(model, x)
    kill_random(reg, seed)
    learned = reg.structure()
    full = netmorph.count_flops(model, x)
    budget = full * (0.5 + np.random.default_rng(seed).random())           # between 50% and 150%
    try:
        expanded = netmorph.expand(model, x, learned, budget)
    except ValueError as exc:
        # below the smallest network; or a group a width cannot describe (test_apply_structure.py has one)
        assert "budget" in str(exc) or "unevenly" in str(exc), exc
        return
    grown = netmorph.apply_structure(model, expanded, example_inputs=x)
    assert netmorph.count_flops(grown, x) == expanded.cost, model.spec
    assert expanded.cost <= budget
