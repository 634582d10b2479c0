"""Hugging Face transformers (and HF ResNet and ConvNeXt) built from small configs (nothing is downloaded). GPT-2's projections
are ``Conv1D`` layers (weight laid out ``[in, out]``, computed by ``addmm``) and its GELU is written
out with ``pow`` and ``tanh``: its MLP hidden width is changeable and prunes exactly, and so are its
attention heads (``c_attn(x).split(self.split_size, dim=2)``: tests/test_attention_heads.py). The
hidden size (the residual stream: ``wte``, ``wpe`` and every block's output projections) is changeable
too, but approximate (LayerNorm): ``prune`` removes it only with ``approximate=True``
(tests/test_hidden_width.py)."""
import pytest
import torch
from torch import nn

import netmorph
from netmorph.graph import build_graph
from tests.conftest import reference_flops
from tests.test_prune import kill_and_prune_exactly

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra: pip install -e '.[test]'")


class Logits(nn.Module):
    """The language model's logits for token ids (no key/value cache: it would be an output)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids, use_cache=False).logits


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_inner=256, vocab_size=100, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    return Logits(transformers.GPT2LMHeadModel(config).eval()).eval(), torch.randint(0, 100, (1, 16))


def test_gpt2_mlp_hidden_width_is_changeable_and_prunes_exactly(one_thread):
    model, ids = gpt2()
    assert netmorph.count_flops(model, ids) == reference_flops(model, ids)
    graph = build_graph(model, ids)
    exact = sorted(n for n, l in graph.layers.items() if graph.groups[int(graph.group_of[l.out[0]])].frozen is None
                   and graph.groups[int(graph.group_of[l.out[0]])].approximate is None)
    assert exact == [f"model.transformer.h.{i}.{layer}" for i in (0, 1) for layer in ("attn.c_attn", "mlp.c_fc")]
    hidden = graph.groups[int(graph.group_of[graph.layers["model.transformer.wte"].out[0]])]
    assert hidden.frozen is None and "LayerNorm 'model.transformer.h.0.ln_1'" in hidden.approximate
    reg = netmorph.GroupLassoFlopsRegularizer(model, ids, threshold=0.0)
    reg.loss().backward()                                          # weight norms of the [in, out] columns
    assert model.model.transformer.h[0].mlp.c_fc.weight.grad.abs().sum() > 0
    reg.regularized[hidden.channels] = False                      # the exact groups only (kept alive)
    small = kill_and_prune_exactly(model, reg, ids)
    fc, proj = small.model.transformer.h[0].mlp.c_fc, small.model.transformer.h[0].mlp.c_proj
    assert type(fc).__name__ == "Conv1D" and fc.weight.shape == (64, fc.nf) and proj.weight.shape == (fc.nf, 64)
    assert fc.nf < 256
    assert netmorph.count_flops(small, ids) == reg.cost() == reference_flops(small, ids) < reference_flops(model, ids)


def test_gpt2_mlp_width_set_by_apply_structure_keeps_the_conv1d_layout(one_thread):
    model, ids = gpt2()
    wide = netmorph.apply_structure(model, {"model.transformer.h.0.mlp.c_fc": 300, "model.transformer.h.1.mlp.c_fc": 96},
                                    example_inputs=ids)
    h0, h1 = wide.model.transformer.h
    assert h0.mlp.c_fc.weight.shape == (64, 300) and h0.mlp.c_proj.weight.shape == (300, 64) and h0.mlp.c_fc.nf == 300
    assert h1.mlp.c_fc.weight.shape == (64, 96) and h1.mlp.c_proj.weight.shape == (96, 64)
    assert wide(ids).shape == model(ids).shape
    # the kept channels keep their weights: the most important 96 columns of layer 1's c_fc
    old = model.model.transformer.h[1].mlp.c_fc.weight
    kept = torch.sort(old.norm(dim=0).topk(96).indices).values
    assert torch.equal(h1.mlp.c_fc.weight, old[:, kept])


class ImageLogits(nn.Module):
    """An image classifier's logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


def hf_resnet():
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck",
                                       num_labels=10)
    return ImageLogits(transformers.ResNetForImageClassification(config).eval()).eval(), torch.randn(2, 3, 32, 32)


def hf_convnext():
    torch.manual_seed(0)
    config = transformers.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=10)
    return ImageLogits(transformers.ConvNextForImageClassification(config).eval()).eval(), torch.randn(2, 3, 32, 32)


def test_hf_resnet_channels_all_change_and_prune_exactly(one_thread):
    """Every conv of HF's ResNet (stem, bottleneck inner widths, each stage's residual width with its
    shortcut conv) is changeable; 30% of the channels killed through the BatchNorm gammas prune exactly."""
    model, x = hf_resnet()
    graph = build_graph(model, x)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8 and all(graph.groups[int(graph.group_of[graph.layers[n].out[0]])].frozen is None for n in convs)
    reg = netmorph.GammaFlopsRegularizer(model, x)
    small = kill_and_prune_exactly(model, reg, x)
    stage = small.model.resnet.encoder.stages[1].layers[0]
    assert stage.layer[0].convolution.out_channels < 8 and stage.shortcut.convolution.out_channels < 32
    assert netmorph.count_flops(small, x) == reg.cost() == reference_flops(small, x) < reference_flops(model, x)


def test_hf_convnext_mlp_width_prunes_exactly_and_the_residual_width_is_approximate(one_thread):
    """HF's ConvNeXt: each block's inverted-bottleneck width (``pwconv1``, a linear layer on channels-last
    maps) prunes exactly; the residual width is read by a LayerNorm over channels, whose removal is not
    exact: it is an approximate group (changeable, kept by ``prune`` unless asked), and ``explain`` says
    which LayerNorm makes it so."""
    model, x = hf_convnext()
    graph = build_graph(model, x)
    blocks = [f"model.convnext.encoder.stages.{i}.layers.0" for i in (0, 1)]
    for block in blocks:
        assert graph.groups[int(graph.group_of[graph.layers[f"{block}.pwconv1"].out[0]])].approximate is None
        residual = graph.groups[int(graph.group_of[graph.layers[f"{block}.dwconv"].out[0]])]
        assert residual.frozen is None and "layernorm" in residual.approximate.lower().replace(" ", "").replace("_", "")
    assert "approximate" in netmorph.explain(model, x)
    reg = netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)
    reg.regularized &= ~reg.graph.approximate_mask()                   # the exact groups only
    small = kill_and_prune_exactly(model, reg, x)
    for block, width in zip(blocks, (64, 128)):
        fc1, fc2 = small.get_submodule(f"{block}.pwconv1"), small.get_submodule(f"{block}.pwconv2")
        assert fc1.out_features == fc2.in_features < width
    assert netmorph.count_flops(small, x) == reg.cost() == reference_flops(small, x) < reference_flops(model, x)
