"""The hidden width of a transformer (its residual stream): embeddings as sources, parameters read in
forward (position embeddings, a class token, a layer scale) tied and resized with it, RMS norms exact
(eps and gain rescaled), LayerNorm approximate (pruned only when asked, the change reported)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netmorph
from netmorph.graph import build_graph
from tests.conftest import reference_flops


class PyRMSNorm(nn.Module):
    """Llama's ``LlamaRMSNorm`` written out (pow, mean, rsqrt, mul): recognised whole."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


class GemmaRMSNorm(PyRMSNorm):
    """An offset gain, ``(1 + weight)``: not ``weight * x / rms``, so not recognised (frozen, saying so)."""

    def forward(self, x):
        return (1.0 + self.weight) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


class FunctionalRMSNorm(nn.RMSNorm):
    """``F.rms_norm`` with the module's own weight and eps inside an overridden forward."""

    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


NORMS = {"nn.RMSNorm": lambda d: nn.RMSNorm(d, eps=1e-5), "python": PyRMSNorm,
         "F.rms_norm": lambda d: FunctionalRMSNorm(d, eps=1e-5), "LayerNorm": nn.LayerNorm, "gemma": GemmaRMSNorm}


class TinyLM(nn.Module):
    """Token embedding + position embedding parameter -> 2 pre-norm MLP blocks with a layer scale ->
    final norm -> head. Hidden width 16."""

    def __init__(self, norm, dim=16, vocab=50, tokens=8, layer_scale=True):
        super().__init__()
        self.layer_scale = layer_scale
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.1)
        self.norms = nn.ModuleList([NORMS[norm](dim) for _ in range(2)])
        self.fc1 = nn.ModuleList([nn.Linear(dim, 32) for _ in range(2)])
        self.fc2 = nn.ModuleList([nn.Linear(32, dim) for _ in range(2)])
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))
        self.final = NORMS[norm](dim)
        self.head = nn.Linear(dim, 7)
        with torch.no_grad():
            for n in [*self.norms, self.final]:
                n.weight.uniform_(0.5, 1.5)

    def forward(self, ids):
        x = self.emb(ids) + self.pos
        for norm, fc1, fc2 in zip(self.norms, self.fc1, self.fc2):
            y = fc2(F.gelu(fc1(norm(x))))
            x = x + (self.gamma * y if self.layer_scale else y)
        return self.head(self.final(x))


def tiny(norm, **kw):
    torch.manual_seed(0)
    return TinyLM(norm, **kw).eval(), torch.randint(0, 50, (2, 8))


def hidden_group(graph):
    return graph.groups[int(graph.group_of[graph.layers["emb"].out[0]])]


DEAD = [1, 4, 9, 12, 15]                  # hidden channels killed (5 of 16)


def kill_hidden(model, reg):
    dead = np.zeros(reg.graph.n_channels, dtype=bool)
    dead[reg.graph.layers["emb"].out[DEAD]] = True
    reg.zero_channels(dead)                # embedding columns, position slices, fc2 rows and biases, gamma


@pytest.mark.parametrize("norm", ["nn.RMSNorm", "python", "F.rms_norm"])
def test_dead_hidden_channels_go_exactly_under_rms_norm_with_eps_and_gain_rescaled(norm, one_thread):
    model, ids = tiny(norm)
    graph = build_graph(model, ids)
    group = hidden_group(graph)
    assert group.frozen is None and group.approximate is None and group.width == 16
    assert {"emb", "fc2.0", "fc2.1", "parameter 'pos'", "parameter 'gamma'"} <= set(group.producers)
    assert sorted(graph.rescaled) == ["final", "norms.0", "norms.1"]
    reg = netmorph.GroupLassoFlopsRegularizer(model, ids, threshold=0.0)
    assert reg.regularized[group.channels].all()
    kill_hidden(model, reg)
    with torch.no_grad():
        before = model(ids)
    small = netmorph.prune(model, reg)
    with torch.no_grad():
        after = small(ids)
    assert (after - before).abs().max() <= 1e-5 * before.abs().max()
    kept = [i for i in range(16) if i not in DEAD]
    eps_attr = "variance_epsilon" if norm == "python" else "eps"
    assert small.emb.weight.shape == (50, 11) and small.pos.shape == (1, 8, 11) and small.gamma.shape == (11,)
    assert torch.equal(small.pos, model.pos[:, :, kept]) and torch.equal(small.emb.weight, model.emb.weight[:, kept])
    for old, new in zip([*model.norms, model.final], [*small.norms, small.final]):
        assert getattr(new, eps_attr) == pytest.approx(getattr(old, eps_attr) * 16 / 11, rel=1e-12)
        assert torch.allclose(new.weight, old.weight[kept] * math.sqrt(16 / 11), rtol=1e-6)
        if norm != "python":
            assert new.normalized_shape == (11,)
    assert netmorph.count_flops(small, ids) == reg.cost() == reference_flops(small, ids) < reference_flops(model, ids)
    text = netmorph.explain(model, ids)
    assert "exact (RMS norm" in text and "APPROXIMATE" not in text


def test_an_rms_norm_with_an_offset_gain_is_not_taken_for_one_and_freezes_saying_why():
    model, ids = tiny("gemma")
    group = hidden_group(build_graph(model, ids))
    assert group.frozen is not None and "differs from weight * x / sqrt(mean(x**2) + eps)" in group.frozen
    assert "GemmaRMSNorm" in group.frozen


def test_hidden_width_under_layer_norm_is_approximate_and_pruned_only_when_asked(one_thread):
    model, ids = tiny("LayerNorm")
    graph = build_graph(model, ids)
    group = hidden_group(graph)
    assert group.frozen is None and "LayerNorm 'norms.0'" in group.approximate
    reg = netmorph.GroupLassoFlopsRegularizer(model, ids, threshold=0.0)
    assert reg.regularized[group.channels].all()                 # regularized like any group
    kill_hidden(model, reg)
    with torch.no_grad():
        before = model(ids)
    kept = netmorph.prune(model, reg)                             # default: nothing approximate goes
    assert kept.emb.weight.shape == (50, 16) and kept.netmorph_report.approximate_kept == 5
    assert kept.netmorph_report.max_rel_change <= 1e-6 and "pass approximate=True" in str(kept.netmorph_report)
    small = netmorph.prune(model, reg, approximate=True)
    report = small.netmorph_report
    assert small.emb.weight.shape == (50, 11) and small.final.normalized_shape == (11,) and small.pos.shape == (1, 8, 11)
    assert report.approximate_removed == 5 and report.channels_removed == 5
    with torch.no_grad():
        change = float((small(ids) - before).abs().max())
    assert change == pytest.approx(report.max_abs_change) and change > 1e-4      # reported, and not zero
    assert netmorph.count_flops(small, ids) == reg.cost() == reference_flops(small, ids)
    text = netmorph.explain(model, ids)
    assert "APPROXIMATE: normalized by LayerNorm" in text and "of them approximate" in text
    with pytest.raises(TypeError, match="approximate must be True or False"):
        netmorph.prune(model, reg, approximate="yes")


@pytest.mark.parametrize("norm", ["python", "LayerNorm"])
def test_apply_structure_and_expand_set_the_hidden_width_by_the_embedding(norm, one_thread):
    model, ids = tiny(norm)
    narrow = netmorph.apply_structure(model, {"emb": 10}, example_inputs=ids)
    assert narrow.emb.weight.shape == (50, 10) and narrow.pos.shape == (1, 8, 10) and narrow.gamma.shape == (10,)
    assert narrow.fc2[1].out_features == 10 and narrow.head.in_features == 10 and narrow.final.weight.shape == (10,)
    assert narrow(ids).shape == (2, 8, 7)
    wide = netmorph.apply_structure(model, {"emb": 24}, example_inputs=ids)
    assert wide.pos.shape == (1, 8, 24) and torch.equal(wide.pos[:, :, :16], model.pos)
    assert torch.equal(wide.gamma, torch.full((24,), 0.5))       # a layer scale of one value stays that value
    budget = 0.7 * reference_flops(model, ids)
    grown = netmorph.expand(model, ids, {}, budget)
    small = netmorph.apply_structure(model, grown, example_inputs=ids)
    assert grown["emb"] < 16 and grown.cost == reference_flops(small, ids) <= budget


def test_a_parameter_read_by_an_op_without_a_rule_freezes_naming_it():
    class Rolled(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.cls = nn.Parameter(torch.zeros(1, 1, 8))
            self.head = nn.Linear(8, 3)

        def forward(self, ids):
            cls = torch.roll(self.cls, 1, dims=0).expand(ids.shape[0], -1, -1)
            return self.head(torch.cat([cls, self.emb(ids)], dim=1)[:, 0])
    graph = build_graph(Rolled(), torch.randint(0, 10, (2, 5)))
    group = graph.groups[int(graph.group_of[graph.layers["emb"].out[0]])]
    assert "'roll'" in group.frozen and "it reads parameter 'cls'" in group.frozen


def test_an_embedding_is_a_source_of_its_columns_and_costs_its_table():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(30, 12), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 4))
    ids = torch.randint(0, 30, (3, 5))
    reg = netmorph.GroupLassoModelSizeRegularizer(model, ids, threshold=0.0)
    assert reg.cost() == 30 * 12 + 12 * 6 + 6 * 4
    dead = np.zeros(reg.graph.n_channels, dtype=bool)
    dead[reg.graph.layers["0"].out[:5]] = True
    reg.zero_channels(dead)
    assert (model[0].weight[:, :5] == 0).all() and (model[0].weight[:, 5:] != 0).all()
    with torch.no_grad():
        before = model(ids)
    small = netmorph.prune(model, reg)
    assert small[0].weight.shape == (30, 7) and small[1].in_features == 7
    assert torch.allclose(small(ids), before, atol=1e-6)
    assert netmorph.count_params(small) - 6 - 4 == reg.cost() == 30 * 7 + 7 * 6 + 6 * 4


def test_a_dead_channel_that_still_carries_a_bias_into_an_rms_norm_is_kept_unless_approximate(one_thread):
    """Zero weights but a bias left (killed by hand): the channel is a constant, not zero, so the RMS
    rescale would not be exact: ``prune`` keeps it (the outputs stay) unless ``approximate=True``."""
    model, ids = tiny("nn.RMSNorm", layer_scale=False)
    reg = netmorph.GroupLassoFlopsRegularizer(model, ids, threshold=0.0)
    kill_hidden(model, reg)
    with torch.no_grad():
        model.fc2[0].bias[DEAD[:2]] = 0.3            # channels 1 and 4 carry 0.3 from block 0 on
        before = model(ids)
    assert not reg.alive()[reg.graph.layers["emb"].out[DEAD]].any()            # dead by their weights
    small = netmorph.prune(model, reg)
    assert small.emb.weight.shape == (50, 13) and small.netmorph_report.approximate_kept == 2
    with torch.no_grad():
        assert (small(ids) - before).abs().max() <= 1e-5 * before.abs().max()
    rough = netmorph.prune(model, reg, approximate=True)
    assert rough.emb.weight.shape == (50, 11) and rough.netmorph_report.approximate_removed == 2
    assert rough.netmorph_report.max_rel_change > 1e-4
