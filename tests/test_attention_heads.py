"""Attention heads prune exactly on real transformer code built from tiny configs (nothing downloaded):
timm's ViT, Hugging Face BERT, ViT, Llama (multi-head and grouped-query), GPT-2 (fused ``Conv1D`` split by
``split_size``), BART and Whisper (encoder self-attention, decoder self- and cross-attention) and Wav2Vec2;
T5's heads are tied across each stack by its shared relative position bias and stay frozen (the bias is an
``nn.Embedding`` lookup no rule slices yet), eval mode, each with its
fused attention (``F.scaled_dot_product_attention``) and its eager one (matmul, softmax, matmul; for
grouped-query Llama through ``repeat_kv``). Heads are
killed by hand -- their value rows and output-projection columns zeroed, as the group-lasso source
would -- and pruning must keep the outputs (1e-5 relative) and shrink heads whole."""
import dataclasses

import numpy as np

import pytest
import torch
from torch import nn

import netmorph
from netmorph.graph import build_graph
from tests.conftest import reference_flops


class Out(nn.Module):
    """A Hugging Face model's output tensor, without the key/value cache (it would be an output)."""

    def __init__(self, model, key, **kwargs):
        super().__init__()
        self.model, self.key, self.kwargs = model, key, kwargs

    def forward(self, x):
        return getattr(self.model(x, **self.kwargs), self.key)


@dataclasses.dataclass
class Heads:
    """Where one attention module keeps its heads: value rows start at ``v_start`` of ``v``."""

    module: nn.Module
    v: nn.Linear
    o: nn.Linear
    heads: int
    head_dim: int
    rep: int = 1                  # query heads per key/value head
    v_start: int = 0


def timm_vit(impl="sdpa"):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                              depth=2, num_heads=4, mlp_ratio=4, num_classes=10).eval()
    for block in model.blocks:
        block.attn.fused_attn = impl == "sdpa"
    return model, torch.randn(2, 3, 32, 32), lambda m: [Heads(b.attn, b.attn.qkv, b.attn.proj, b.attn.num_heads,
                                                              b.attn.head_dim, v_start=2 * b.attn.attn_dim)
                                                        for b in m.blocks]


def _hf(name, config_cls, model_cls, key, x, heads, impl, **config):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=256, attn_implementation=impl, **config)
    kwargs = {"add_pooling_layer": False} if name in ("bert", "vit") else {}
    model = getattr(transformers, model_cls)(config, **kwargs).eval()
    extra = {"use_cache": False} if name.startswith("llama") else {}
    return Out(model, key, **extra).eval(), x, heads


def bert(impl="sdpa"):
    return _hf("bert", "BertConfig", "BertModel", "last_hidden_state", torch.randint(0, 100, (2, 12)),
               lambda m: [Heads(l.attention.self, l.attention.self.value, l.attention.output.dense, 4, 16)
                          for l in m.model.encoder.layer],
               impl, vocab_size=100, max_position_embeddings=64)


def hf_vit(impl="sdpa"):
    return _hf("vit", "ViTConfig", "ViTModel", "last_hidden_state", torch.randn(2, 3, 32, 32),
               lambda m: [Heads(l.attention, l.attention.v_proj, l.attention.o_proj, 4, 16) for l in m.model.layers],
               impl, image_size=32, patch_size=8)


def llama(kv):
    return lambda impl="sdpa": _hf(
        f"llama{kv}", "LlamaConfig", "LlamaForCausalLM", "logits", torch.randint(0, 100, (2, 12)),
        lambda m: [Heads(l.self_attn, l.self_attn.v_proj, l.self_attn.o_proj, 4, 16, rep=4 // kv)
                   for l in m.model.model.layers],
        impl, vocab_size=100, max_position_embeddings=64, num_key_value_heads=kv)


MODELS = {"timm_vit": timm_vit, "bert": bert, "hf_vit": hf_vit, "llama": llama(4), "llama_gqa": llama(2)}
#: query heads killed in layer 0 and layer 1 (3 of 8: 37.5%; for grouped-query, one whole group of 4 pairs)
KILL = {"llama_gqa": ([2, 3], [])}


def kill(where: Heads, heads) -> None:
    """Zero the value rows (of their key/value heads) and output-projection columns of query ``heads``."""
    d = where.head_dim
    with torch.no_grad():
        for h in heads:
            where.o.weight[:, h * d:(h + 1) * d] = 0
            g = h // where.rep
            where.v.weight[where.v_start + g * d:where.v_start + (g + 1) * d] = 0


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_dead_heads_prune_exactly_and_whole(name, impl, one_thread):
    model, x, find = MODELS[name](impl)
    layers = find(model)
    for where, heads in zip(layers, KILL.get(name, ([1], [0, 2]))):
        kill(where, heads)
    with torch.no_grad():
        before = model(x)
    reg = netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)
    small = netmorph.prune(model, reg).eval()
    with torch.no_grad():
        after = small(x)
    assert (after - before).abs().max() <= 1e-5 * before.abs().max()
    for old, new, heads in zip(layers, find(small), KILL.get(name, ([1], [0, 2]))):
        kept = old.heads - len(heads)
        assert new.o.weight.shape == (64, kept * old.head_dim)
        assert new.v.weight.shape[0] == (3 if name == "timm_vit" else 1) * kept * old.head_dim // old.rep
        for attr in ("num_heads", "num_attention_heads", "attn_dim", "all_head_size"):
            if attr in vars(old.module):
                assert vars(new.module)[attr] == vars(old.module)[attr] * kept // old.heads
    assert netmorph.count_flops(small, x) == reg.cost() == reference_flops(small, x) < reference_flops(model, x)


def gpt2(impl):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=32, vocab_size=100, use_cache=False,
                                     bos_token_id=0, eos_token_id=0,
                                     attn_implementation=impl)
    return Out(transformers.GPT2Model(config).eval(), "last_hidden_state").eval(), torch.randint(0, 100, (2, 12))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_gpt2_heads_split_from_a_fused_conv1d_prune_exactly(impl, one_thread):
    """GPT-2 splits its fused ``c_attn`` (a ``Conv1D``: weight ``[in, out]``) with
    ``split(self.split_size, dim=2)``: a split into pieces of an attribute's size, tied like ``chunk``;
    ``split_size``, ``embed_dim`` and ``num_heads`` follow the heads, ``head_dim`` stays."""
    model, x = gpt2(impl)
    d, killed = 16, ([1], [0, 2])
    for block, heads in zip(model.model.h, killed):
        with torch.no_grad():
            for h in heads:
                block.attn.c_proj.weight[h * d:(h + 1) * d] = 0               # the rows c_proj reads head h with
                block.attn.c_attn.weight[:, 128 + h * d:128 + (h + 1) * d] = 0   # its value columns
    with torch.no_grad():
        before = model(x)
    reg = netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)
    assert reg.graph.heads.sum() == 8
    small = netmorph.prune(model, reg).eval()
    with torch.no_grad():
        after = small(x)
    assert (after - before).abs().max() <= 1e-5 * before.abs().max()
    for block, heads in zip(small.model.h, killed):
        kept = 4 - len(heads)
        attn = block.attn
        assert attn.c_attn.weight.shape == (64, 3 * kept * d) and attn.c_proj.weight.shape == (kept * d, 64)
        assert (attn.num_heads, attn.head_dim, attn.split_size, attn.embed_dim) == (kept, d, kept * d, kept * d)
    assert netmorph.count_flops(small, x) == reg.cost() == reference_flops(small, x) < reference_flops(model, x)


def test_query_rows_alone_do_not_kill_a_head_of_a_real_model(one_thread):
    model, x, find = bert()
    with torch.no_grad():
        find(model)[0].module.query.weight[16:32] = 0
    reg = netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)
    assert reg.regularized[reg.graph.heads].all() and reg.alive()[reg.graph.heads].all()
    assert "attention heads: weight norms of the columns of model.encoder.layer.0.attention.output.dense" in \
        netmorph.explain(model, x)


class MhaNet(nn.Module):
    """A linear embedding, ``nn.MultiheadAttention`` with a residual, a linear head."""

    def __init__(self, batch_first=True, bias=True):
        super().__init__()
        self.emb = nn.Linear(8, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=batch_first, bias=bias)
        self.head = nn.Linear(32, 5)

    def forward(self, x, padding=None):
        h = self.emb(x)
        a, _ = self.attn(h, h, h, key_padding_mask=padding)
        return self.head(h + a)


def padding():
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, 4:] = True                                # two padded keys in the second sequence
    return mask


@pytest.mark.parametrize("batch_first", [True, False])
def test_split_multihead_attention_computes_the_same_and_prunes_heads_exactly(batch_first, one_thread):
    torch.manual_seed(0)
    model = MhaNet(batch_first).eval()
    x = torch.randn(2, 6, 8) if batch_first else torch.randn(6, 2, 8)
    assert "netmorph.split_attention(model) makes" in netmorph.explain(model, x)    # torch's module: frozen
    split = netmorph.split_attention(model)
    assert isinstance(model.attn, nn.MultiheadAttention) and isinstance(split.attn, netmorph.SplitMultiheadAttention)
    with torch.no_grad():                             # eval without gradients: torch's fused fast path
        for args in ((x,), (x, padding())):
            assert (split(*args) - model(*args)).abs().max() <= 1e-5 * model(*args).abs().max()
    with torch.no_grad():
        split.attn.out_proj.weight[:, 8:24] = 0       # heads 1 and 2: output columns (value rows left as they are)
    before = split(x)
    reg = netmorph.GroupLassoFlopsRegularizer(split, x, threshold=0.0)
    small = netmorph.prune(split, reg)
    assert (small(x) - before).abs().max() <= 1e-5 * before.abs().max()
    assert small.attn.num_heads == 2 and small.attn.head_dim == 8 and small.attn.embed_dim == 32
    assert small.attn.q_proj.weight.shape == (16, 32) and small.attn.out_proj.weight.shape == (32, 16)
    assert netmorph.count_flops(small, x) == reg.cost() == reference_flops(small, x)


def test_split_transformer_encoder_layer_keeps_its_output_and_exposes_heads(one_thread):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 6, 32)
    split = netmorph.split_attention(layer)
    with torch.no_grad():
        assert (split(x) - layer(x)).abs().max() <= 1e-5 * layer(x).abs().max()
        assert (split(x, src_key_padding_mask=padding()) - layer(x, src_key_padding_mask=padding()))[0].abs().max() \
            <= 1e-5 * layer(x).abs().max()            # (torch's fused path zeroes padded positions: row 0 has none)
    from netmorph.graph import build_graph
    graph = build_graph(split, x)
    assert sorted(g.width for g in graph.groups if g.frozen is None) == [4, 64]


def test_split_attention_weights_freeze_the_heads_and_extra_keys_are_refused():
    torch.manual_seed(0)

    class Weights(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            y, w = self.attn(x, x, x)
            return y, w
    model, x = Weights().eval(), torch.randn(2, 5, 16)
    kept = netmorph.split_attention(model, weights=True)
    with torch.no_grad():
        for a, b in zip(kept(x), model(x)):
            assert torch.allclose(a, b, atol=1e-6)
    from netmorph.graph import build_graph
    assert all(g.frozen is not None for g in build_graph(kept, x).groups)   # averaged over heads: no head may go
    assert netmorph.split_attention(model)(x)[1] is None
    with pytest.raises(ValueError, match="add_bias_kv or add_zero_attn"):
        netmorph.split_attention(nn.MultiheadAttention(16, 2, add_bias_kv=True))


def test_adam_preconditioner_reads_heads_from_their_output_columns(one_thread):
    """A head's pull in Adam's metric is averaged over the members the regularizer reads: the output
    projection's columns (not the query / key / value rows)."""
    torch.manual_seed(0)
    model, x = MhaNet().eval(), torch.randn(2, 6, 8)
    split = netmorph.split_attention(model)
    reg = netmorph.GroupLassoFlopsRegularizer(split, x, threshold=0.0)
    opt = torch.optim.Adam(split.parameters(), lr=1e-3)
    split(x).square().mean().backward()
    opt.step()
    scale = reg.preconditioner(opt)
    heads = reg.graph.heads & reg.regularized
    assert scale is not None and scale.shape == (reg.graph.n_channels,) and heads.sum() == 4
    v = opt.state[split.attn.out_proj.weight]["exp_avg_sq"] / (1 - 0.999)
    columns = (1 / (v.sqrt() + 1e-8)).mean(0).reshape(4, 8).mean(1).double().numpy()
    head_ids = np.flatnonzero(reg.graph.heads)
    assert np.allclose(scale[head_ids] / scale[head_ids].mean(), columns / columns.mean())


class Seq2Seq(nn.Module):
    """An encoder-decoder's last decoder state for (encoder input, decoder ids), no key/value cache."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, source, ids):
        return self.model(source, decoder_input_ids=ids, use_cache=False).last_hidden_state


def bart(impl):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BartConfig(vocab_size=100, d_model=64, encoder_layers=2, decoder_layers=2,
                                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256,
                                     decoder_ffn_dim=256, max_position_embeddings=64, attn_implementation=impl)
    return Seq2Seq(transformers.BartModel(config).eval()).eval(), (torch.randint(3, 100, (2, 12)),
                                                                   torch.randint(3, 100, (2, 8)))


def whisper(impl):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.WhisperConfig(vocab_size=100, d_model=64, encoder_layers=2, decoder_layers=2,
                                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256,
                                        decoder_ffn_dim=256, num_mel_bins=16, max_source_positions=16,
                                        max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                        decoder_start_token_id=1, attn_implementation=impl)
    return Seq2Seq(transformers.WhisperModel(config).eval()).eval(), (torch.randn(2, 16, 32),   # 16 mel bins, 32 frames
                                                                      torch.randint(3, 100, (2, 8)))


def wav2vec2(impl):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                                         conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3),
                                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=20,
                                         attn_implementation=impl)
    return Out(transformers.Wav2Vec2Model(config).eval(), "last_hidden_state").eval(), (torch.randn(2, 400),)


def bart_style_attention(model):
    """Every attention module with ``q_proj``/``v_proj``/``out_proj`` (BART, Whisper, Wav2Vec2), in order."""
    return [m for m in model.modules() if all(hasattr(m, a) for a in ("q_proj", "v_proj", "out_proj"))]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["bart", "whisper", "wav2vec2"])
def test_encoder_decoder_and_speech_heads_prune_exactly(family, impl, one_thread):
    """Self-attention of the encoder, self- and cross-attention of the decoder (BART, Whisper: 6 modules),
    Wav2Vec2's encoder (2): head 1 killed in the even modules, heads 0 and 2 in the odd ones."""
    model, x = {"bart": bart, "whisper": whisper, "wav2vec2": wav2vec2}[family](impl)
    attns = bart_style_attention(model)
    assert len(attns) == (2 if family == "wav2vec2" else 6)
    killed = [[1] if i % 2 == 0 else [0, 2] for i in range(len(attns))]
    for a, heads in zip(attns, killed):
        kill(Heads(a, a.v_proj, a.out_proj, a.num_heads, a.head_dim), heads)
    with torch.no_grad():
        before = model(*x)
    reg = netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)
    assert reg.graph.heads.sum() == 4 * len(attns)                       # every head of every module is a channel
    small = netmorph.prune(model, reg).eval()
    with torch.no_grad():
        after = small(*x)
    assert before.abs().max() > 0.1 and (after - before).abs().max() <= 1e-5 * before.abs().max()
    for a, heads in zip(bart_style_attention(small), killed):
        kept = 4 - len(heads)
        assert a.num_heads == kept and a.head_dim == 16 and a.embed_dim == 64        # embed_dim: the hidden size
        assert a.q_proj.weight.shape == a.k_proj.weight.shape == a.v_proj.weight.shape == (16 * kept, 64)
        assert a.out_proj.weight.shape == (64, 16 * kept)
    assert netmorph.count_flops(small, x) == reg.cost() == reference_flops(small, *x) < reference_flops(model, *x)


def t5(impl):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=256, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                   attn_implementation=impl)
    return Seq2Seq(transformers.T5Model(config).eval()).eval(), (torch.randint(0, 100, (2, 12)),
                                                                 torch.randint(0, 100, (2, 8)))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_t5_heads_are_tied_across_each_stack_by_the_shared_position_bias(impl, one_thread):
    """T5 computes its relative position bias ``[1, heads, q, k]`` once per stack (an ``nn.Embedding`` of
    ``heads`` columns, in the first layer; cross-attention: ``torch.zeros((1, self.n_heads, q, k))``) and
    adds it to every layer's scores (sdpa: merged with the causal mask by ``torch.where`` first), so head
    h of every layer of a stack reads the same bias slice: the heads are tied across the stack, and a
    head goes from every layer with its bias column, exactly."""
    model, x = t5(impl)
    graph = build_graph(model, x)

    def heads(attn):
        return set(graph.layers[f"model.{attn}.q"].out.tolist())
    kinds = {"encoder": ("encoder", "layer.0.SelfAttention"), "decoder": ("decoder", "layer.0.SelfAttention"),
             "cross": ("decoder", "layer.1.EncDecAttention")}
    found = {}
    for kind, (stack, attn) in kinds.items():
        first, second = heads(f"{stack}.block.0.{attn}"), heads(f"{stack}.block.1.{attn}")
        assert len(first) == 4 and first == second                       # head h of layer 0 is head h of layer 1
        assert all(graph.frozen[c] is None for c in first)
        found[kind] = sorted(first)
    assert len(set().union(*map(set, found.values()))) == 12                # three separate sets of heads
    reg = netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)
    reg.zero_channels([found["encoder"][1], found["decoder"][2], found["cross"][0], found["cross"][3]])
    for i in (0, 1):                                                    # a third of each encoder MLP's channels
        reg.zero_channels(reg.graph.layers[f"model.encoder.block.{i}.layer.1.DenseReluDense.wi"].out[::3])
    with torch.no_grad():
        before = model(*x)
    small = netmorph.prune(model, reg).eval()
    with torch.no_grad():
        assert (small(*x) - before).abs().max() <= 1e-5 * before.abs().max()
    inner = small.model
    assert [blk.layer[0].SelfAttention.n_heads for blk in inner.encoder.block] == [3, 3]
    assert [blk.layer[0].SelfAttention.n_heads for blk in inner.decoder.block] == [3, 3]
    assert [blk.layer[1].EncDecAttention.n_heads for blk in inner.decoder.block] == [2, 2]
    assert inner.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.shape[1] == 3
    assert all(blk.layer[1].DenseReluDense.wi.out_features < 256 for blk in inner.encoder.block)
    assert netmorph.count_flops(small, x) == reg.cost() == reference_flops(small, *x) < reference_flops(model, *x)


def test_a_t5_head_dead_in_one_layer_only_is_kept(one_thread):
    """Head h of layer 0 and head h of layer 1 read one bias column: one of them dead is not enough."""
    model, x = t5("eager")
    reg = netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)
    attn = model.model.encoder.block[0].layer[0].SelfAttention
    with torch.no_grad():
        attn.o.weight[:, 16:32] = 0                                     # head 1's output columns, layer 0 only
    small = netmorph.prune(model, reg)
    assert [blk.layer[0].SelfAttention.n_heads for blk in small.model.encoder.block] == [4, 4]


@pytest.mark.parametrize("name", ["bert", "hf_vit"])
def test_unequal_heads_per_layer_save_and_reload(name, tmp_path, one_thread):
    """Layer 0 keeps 3 heads, layer 1 keeps 2: ``netmorph.save`` writes the widths and weights,
    ``netmorph.load`` rebuilds the network from a fresh model, head-count attributes included, without
    example inputs (token ids are recorded as int64). A Hugging Face config holds one head count for
    every layer: ``from_pretrained`` of the pruned model's ``save_pretrained`` refuses the shapes."""
    transformers = pytest.importorskip("transformers")
    model, x, find = MODELS[name]()
    for where, heads in zip(find(model), ([1], [0, 2])):
        kill(where, heads)
    reg = netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)
    small = netmorph.prune(model, reg).eval()
    netmorph.save(small, reg.structure(), tmp_path / "pruned")
    assert ("int64" in (tmp_path / "pruned" / "structure.json").read_text()) == (name == "bert")
    fresh, _, _ = MODELS[name]()
    back = netmorph.load(fresh, tmp_path / "pruned").eval()
    with torch.no_grad():
        assert torch.equal(back(x), small(x))
    for layer, kept in zip(find(back), (3, 2)):
        assert layer.o.weight.shape == (64, 16 * kept)
        assert vars(layer.module)["num_attention_heads"] == kept and vars(layer.module).get("all_head_size", 16 * kept) == 16 * kept
    assert netmorph.count_flops(back, x) == netmorph.count_flops(small, x) < netmorph.count_flops(fresh, x)
    with pytest.raises(ValueError, match="the structure gives .* 64 output channels, the model has 48"):
        netmorph.save(small, {n: l.width for n, l in reg.graph.layers.items()}, tmp_path / "wrong")
    small.model.save_pretrained(tmp_path / "hf")
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        type(small.model).from_pretrained(tmp_path / "hf")
