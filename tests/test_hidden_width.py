"""The hidden width (residual stream) of real transformers built from small configs (nothing is
downloaded; hidden 64, 2 layers, 4 heads, MLP 256, 16 tokens, batch 1): Hugging Face Llama and T5 (RMS
norms: exact), BERT, GPT-2 and ViT and timm's ViT (LayerNorm: approximate). Issue 14's target: with 30% of
every changeable group removed (heads, MLP widths and the hidden width), each keeps at most 55% of its
FLOPs."""
import numpy as np
import pytest
import torch
from torch import nn

import netmorph
from tests.conftest import reference_flops
from tests.test_attention_heads import Out

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra: pip install -e '.[test]'")


def _config(name, **kw):
    return getattr(transformers, name)(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=256, **kw)


def llama(kv=4):
    config = _config("LlamaConfig", vocab_size=100, max_position_embeddings=64, num_key_value_heads=kv)
    return Out(transformers.LlamaForCausalLM(config), "logits", use_cache=False), torch.randint(0, 100, (1, 16))


def bert():
    config = _config("BertConfig", vocab_size=100, max_position_embeddings=64)
    return Out(transformers.BertForSequenceClassification(config), "logits"), torch.randint(0, 100, (1, 16))


def gpt2():
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_inner=256, vocab_size=100, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    return Out(transformers.GPT2LMHeadModel(config), "logits", use_cache=False), torch.randint(0, 100, (1, 16))


def hf_vit():
    config = _config("ViTConfig", image_size=32, patch_size=8, num_labels=10)      # 16 patches and a class token
    return Out(transformers.ViTForImageClassification(config), "logits"), torch.randn(1, 3, 32, 32)


def timm_vit():
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                             depth=2, num_heads=4, mlp_ratio=4, num_classes=10), torch.randn(1, 3, 32, 32)


MODELS = {"llama": llama, "llama_gqa": lambda: llama(kv=2), "bert": bert, "gpt2": gpt2, "hf_vit": hf_vit,
          "timm_vit": timm_vit}
#: the first layer of each model's hidden-width group (what its width is set by)
HIDDEN = {"llama": "model.model.embed_tokens", "llama_gqa": "model.model.embed_tokens",
          "bert": "model.bert.embeddings.word_embeddings", "gpt2": "model.transformer.wte",
          "hf_vit": "model.vit.embeddings.patch_embeddings.projection", "timm_vit": "patch_embed.proj"}
#: FLOPs kept with 30% of every changeable group removed (measured; issue 14's target is at most 0.55;
#: grouped-query Llama has 2 key/value groups of 2 query heads, and round(0.3 * 2) = 1 removes half its heads)
KEPT = {"llama": 0.517, "llama_gqa": 0.476, "bert": 0.513, "gpt2": 0.525, "hf_vit": 0.533, "timm_vit": 0.533}


def build(name):
    torch.manual_seed(0)
    model, x = MODELS[name]()
    return model.eval(), x


def hidden_group(graph, name):
    return graph.groups[int(graph.group_of[graph.layers[HIDDEN[name]].out[0]])]


def kill_fraction(reg, fraction, groups=None):
    """Make ``round(fraction * width)`` regularized channels of every changeable group (or of ``groups``)
    exactly dead: for 4 heads one head, for 64 hidden channels 19."""
    dead = np.zeros(reg.graph.n_channels, dtype=bool)
    for group in reg.graph.groups:
        if group.frozen is None and (groups is None or group.id in groups):
            ch = group.channels[reg.regularized[group.channels]]
            dead[ch[:int(round(fraction * group.width))]] = True
    reg.zero_channels(dead)
    return dead


@pytest.mark.parametrize("name", ["llama", "llama_gqa"])
def test_dead_hidden_channels_of_llama_go_exactly(name, one_thread, tmp_path):
    model, ids = build(name)
    reg = netmorph.GroupLassoFlopsRegularizer(model, ids, threshold=0.0)
    group = hidden_group(reg.graph, name)
    assert group.frozen is None and group.approximate is None and group.width == 64
    assert len(reg.graph.rescaled) == 5                              # 2 norms per layer and the final one
    dead = kill_fraction(reg, 0.3, {group.id})
    assert dead.sum() == 19
    with torch.no_grad():
        before = model(ids)
    small = netmorph.prune(model, reg).eval()
    with torch.no_grad():
        after = small(ids)
    assert (after - before).abs().max() <= 1e-5 * before.abs().max()
    inner = small.model.model
    assert inner.embed_tokens.weight.shape == (100, 45) and small.model.lm_head.in_features == 45
    assert inner.layers[0].self_attn.q_proj.in_features == 45 and inner.layers[1].mlp.down_proj.out_features == 45
    old_norm = model.model.model.norm
    assert inner.norm.variance_epsilon == pytest.approx(old_norm.variance_epsilon * 64 / 45, rel=1e-12)
    kept = torch.as_tensor(np.flatnonzero(~dead[reg.graph.layers[HIDDEN[name]].out]))
    assert torch.allclose(inner.norm.weight, old_norm.weight[kept] * (64 / 45) ** 0.5)
    assert netmorph.count_flops(small, ids) == reg.cost() == reference_flops(small, ids) < reference_flops(model, ids)
    # saved as widths + weights and rebuilt from a fresh model: eps and gains rescaled the same way
    reg.structure().save(tmp_path / "structure.json")
    torch.save(small.state_dict(), tmp_path / "model.pt")
    loaded = netmorph.load(build(name)[0], tmp_path, example_inputs=ids).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(ids), after, atol=1e-6)
    assert loaded.model.model.norm.variance_epsilon == inner.norm.variance_epsilon


@pytest.mark.parametrize("name", sorted(MODELS))
def test_thirty_percent_of_every_group_removed_keeps_at_most_55_percent_of_the_flops(name, one_thread):
    model, x = build(name)
    reg = netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)
    graph = reg.graph
    group = hidden_group(graph, name)
    assert group.frozen is None and group.width == 64 and reg.regularized[group.channels].all()
    assert (group.approximate is None) == name.startswith("llama")  # RMS norms exact, LayerNorm approximate
    heads = [g for g in graph.groups if g.frozen is None and graph.heads[g.channels].all()]
    assert len(heads) == 2 and all(g.width == (2 if name == "llama_gqa" else 4) for g in heads)
    kill_fraction(reg, 0.3)
    with torch.no_grad():
        before = model(x)
    small = netmorph.prune(model, reg, approximate=True).eval()
    report = small.netmorph_report
    kept = report.flops_after / report.flops_before
    assert kept == pytest.approx(KEPT[name], abs=5e-4) and kept <= 0.55
    assert report.flops_before == reference_flops(model, x)
    assert netmorph.count_flops(small, x) == reg.cost() == report.flops_after == reference_flops(small, x)
    with torch.no_grad():
        change = float((small(x) - before).abs().max() / before.abs().max())
    assert change == pytest.approx(report.max_rel_change, rel=1e-6)
    if name.startswith("llama"):
        assert change <= 1e-5 and report.approximate_removed == 0                  # every group exact
    else:
        assert change > 1e-3 and report.approximate_removed == 19                  # LayerNorm: reported
    assert small(x).shape == before.shape
    if name == "gpt2":                                              # the tied head stays tied
        assert small.model.lm_head.weight is small.model.transformer.wte.weight


@pytest.mark.parametrize("name", ["bert", "timm_vit"])
def test_without_approximate_the_layernorm_hidden_width_stays_and_the_rest_prunes_exactly(name, one_thread):
    model, x = build(name)
    reg = netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)
    kill_fraction(reg, 0.3)
    with torch.no_grad():
        before = model(x)
    small = netmorph.prune(model, reg).eval()
    with torch.no_grad():
        assert (small(x) - before).abs().max() <= 1e-5 * before.abs().max()
    assert small.netmorph_report.approximate_kept == 19
    assert [l.width for n, l in netmorph.graph.build_graph(small, x).layers.items() if n == HIDDEN[name]] == [64]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_apply_structure_and_expand_change_the_hidden_width(name, one_thread):
    model, x = build(name)
    narrow = netmorph.apply_structure(model, {HIDDEN[name]: 48}, example_inputs=x).eval()
    graph = netmorph.graph.build_graph(narrow, x)
    assert hidden_group(graph, name).width == 48 and narrow(x).shape == model(x).shape
    wide = netmorph.apply_structure(model, {HIDDEN[name]: 80}, example_inputs=x)
    assert hidden_group(netmorph.graph.build_graph(wide, x), name).width == 80
    budget = 0.6 * reference_flops(model, x)
    grown = netmorph.expand(model, x, {}, budget)
    built = netmorph.apply_structure(model, grown, example_inputs=x)
    assert grown[HIDDEN[name]] < 64 and grown.cost == reference_flops(built, x) <= budget


def test_t5_layer_norm_is_an_rms_norm_and_its_dead_hidden_channels_go_exactly(one_thread):
    """T5's ``T5LayerNorm`` is an RMS norm (no mean, no bias): recognised whole, exact."""
    torch.manual_seed(0)
    config = transformers.T5Config(d_model=64, d_ff=256, num_layers=2, num_heads=4, d_kv=16, vocab_size=100)
    model = nn.Sequential()
    model.t5, model.head = Out(transformers.T5EncoderModel(config), "last_hidden_state"), nn.Linear(64, 3)
    model.eval()
    ids = torch.randint(0, 100, (1, 16))
    reg = netmorph.GroupLassoFlopsRegularizer(model, ids, threshold=0.0)
    embed = next(n for n, l in reg.graph.layers.items() if l.kind == "embedding")
    group = reg.graph.groups[int(reg.graph.group_of[reg.graph.layers[embed].out[0]])]
    assert group.frozen is None and group.approximate is None and len(reg.graph.rescaled) == 5
    kill_fraction(reg, 0.3, {group.id})
    with torch.no_grad():
        before = model(ids)
    small = netmorph.prune(model, reg).eval()
    with torch.no_grad():
        assert (small(ids) - before).abs().max() <= 1e-5 * before.abs().max()
    assert small.t5.model.shared.weight.shape == (100, 45) and small.head.in_features == 45
    assert netmorph.count_flops(small, ids) == reg.cost() == reference_flops(small, ids)


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_explain_says_which_groups_are_exact_and_which_approximate(name, one_thread):
    model, x = build(name)
    lines = netmorph.explain(model, x).splitlines()
    removal = [line.split("removal:", 1)[1].strip() for line in lines if "removal:" in line]
    # hidden width, 2 x (heads, MLP width), and BERT's pooler
    assert len(removal) == (6 if name == "bert" else 5)
    assert sum(r.startswith("APPROXIMATE: normalized by LayerNorm") for r in removal) == (name == "bert")
    assert sum(r.startswith("exact (RMS norm") for r in removal) == (name == "llama")
    assert sum(r.startswith("exact (a dead head adds nothing") for r in removal) == 2
    assert ("(64 of them approximate)" in lines[0]) == (name == "bert")


class Seq2SeqLogits(nn.Module):
    """T5's logits for (input ids, decoder input ids), without a cache."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, decoder_ids):
        return self.model(input_ids=ids, decoder_input_ids=decoder_ids, use_cache=False).logits


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_t5_with_thirty_percent_of_every_group_removed_keeps_at_most_55_percent_exactly(impl, one_thread):
    """T5 for generation (encoder, decoder, tied lm_head): one hidden width (the shared table's columns,
    RMS norms: exact), heads tied across each stack (encoder, decoder, cross-attention), MLP widths. With
    30% of each removed it keeps 52.4% of its FLOPs (issue 14's target: at most 55%) and every group is
    exact."""
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=256, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                   attn_implementation=impl)
    model = Seq2SeqLogits(transformers.T5ForConditionalGeneration(config)).eval()
    x = (torch.randint(0, 100, (1, 16)), torch.randint(0, 100, (1, 16)))
    reg = netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)
    changeable = [g for g in reg.graph.groups if g.frozen is None]
    assert sorted(g.width for g in changeable) == [4] * 3 + [64] + [256] * 4      # heads: one set per stack and kind
    kill_fraction(reg, 0.3)
    with torch.no_grad():
        before = model(*x)
    small = netmorph.prune(model, reg).eval()
    report = small.netmorph_report
    assert report.flops_after / report.flops_before == pytest.approx(0.524, abs=5e-4)
    assert netmorph.count_flops(small, x) == reg.cost() == report.flops_after == reference_flops(small, *x)
    with torch.no_grad():
        assert (small(*x) - before).abs().max() <= 1e-5 * before.abs().max()
    t5 = small.model
    assert t5.shared.weight.shape == (100, 45) and t5.lm_head.weight is t5.shared.weight
