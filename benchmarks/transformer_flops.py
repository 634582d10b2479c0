"""Issue 14's target: small transformers with 30% of every changeable group removed keep at most 55% of
their FLOPs.

Run: ``python benchmarks/transformer_flops.py`` (a minute on one core; nothing downloaded).

Every model is built from a small config (hidden 64, 2 layers, 4 heads, MLP 256, 16 tokens, batch 1).
In every changeable channel group (attention heads, MLP widths, the hidden width) the first 30% of its
regularized channels (rounded) are zeroed through a group-lasso regularizer, then ``netmorph.prune(...,
approximate=True)`` removes every dead channel. The table gives the FLOPs kept (``count_flops`` of the
pruned network over the original's: torch's FLOP counter plus the attention products, which its
CPU scaled-dot-product kernel reports as 0; ``tests/test_hidden_width.py`` checks the two agree on every
model) and the largest output change relative to the largest output: exact groups (RMS norms, heads, MLPs) change nothing beyond float
rounding; LayerNorm hidden widths are approximate and change the outputs, which prune reports. No
training: there is no compute to equalize.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import torch
import transformers
from torch import nn

import netmorph
from report import write_section

TARGET = 0.55


class Output(nn.Module):
    """One output tensor of a Hugging Face model (no key/value cache: it would be an output)."""

    def __init__(self, model, key, **kwargs):
        super().__init__()
        self.model, self.key, self.kwargs = model, key, kwargs

    def forward(self, *x):
        if len(x) == 2:                                   # encoder-decoder: input and decoder input ids
            return getattr(self.model(input_ids=x[0], decoder_input_ids=x[1], **self.kwargs), self.key)
        return getattr(self.model(x[0], **self.kwargs), self.key)


def _config(name, **kw):
    return getattr(transformers, name)(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=256, **kw)


def ids(*n):
    return tuple(torch.randint(0, 100, (1, k)) for k in n)


def t5(impl):
    config = transformers.T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=256, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                   attn_implementation=impl)
    return Output(transformers.T5ForConditionalGeneration(config), "logits", use_cache=False), ids(16, 16)


MODELS = {
    "Llama": lambda: (Output(transformers.LlamaForCausalLM(_config("LlamaConfig", vocab_size=100,
                                                                   max_position_embeddings=64)),
                             "logits", use_cache=False), ids(16)),
    "Llama, grouped-query (2 KV heads)": lambda: (Output(transformers.LlamaForCausalLM(_config(
        "LlamaConfig", vocab_size=100, max_position_embeddings=64, num_key_value_heads=2)), "logits", use_cache=False),
        ids(16)),
    "BERT": lambda: (Output(transformers.BertForSequenceClassification(_config("BertConfig", vocab_size=100,
                                                                               max_position_embeddings=64)), "logits"),
                     ids(16)),
    "GPT-2": lambda: (Output(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, n_inner=256, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)),
        "logits", use_cache=False), ids(16)),
    "HF ViT": lambda: (Output(transformers.ViTForImageClassification(_config("ViTConfig", image_size=32, patch_size=8,
                                                                             num_labels=10)), "logits"),
                       (torch.randn(1, 3, 32, 32),)),
    "T5 (sdpa)": lambda: t5("sdpa"),
    "T5 (eager)": lambda: t5("eager"),
}


def timm_vit():
    import timm
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                             depth=2, num_heads=4, mlp_ratio=4, num_classes=10), (torch.randn(1, 3, 32, 32),)


def measure(build) -> dict:
    torch.manual_seed(0)
    model, x = build()
    model.eval()
    reg = netmorph.GroupLassoFlopsRegularizer(model, x, threshold=0.0)
    dead = np.zeros(reg.graph.n_channels, dtype=bool)
    for group in reg.graph.groups:
        if group.frozen is None:
            ch = group.channels[reg.regularized[group.channels]]
            dead[ch[:int(round(0.3 * group.width))]] = True
    reg.zero_channels(dead)
    small = netmorph.prune(model, reg, approximate=True).eval()
    report = small.netmorph_report
    assert report.flops_after == netmorph.count_flops(small, x) and report.flops_before == netmorph.count_flops(model, x)
    return {"kept": report.flops_after / report.flops_before,
            "change": report.max_rel_change, "approximate": report.approximate_removed,
            "groups": sum(g.frozen is None for g in reg.graph.groups)}


def main() -> None:
    torch.set_num_threads(1)
    builds = dict(MODELS)
    if importlib.util.find_spec("timm") is not None:
        builds["timm ViT"] = timm_vit
    rows = ["| model | changeable groups | FLOPs kept | max output change | approximate channels removed | "
            "target <= 55% |", "|---|---|---|---|---|---|"]
    for name, build in builds.items():
        r = measure(build)
        rows.append(f"| {name} | {r['groups']} | {r['kept']:.3f} | {r['change']:.1e} | "
                    f"{r['approximate']} | {'met' if r['kept'] <= TARGET else 'MISSED'} |")
        print(rows[-1], flush=True)
    write_section("transformer_flops", "Transformers: 30% of every group removed (benchmarks/transformer_flops.py)",
                  "python benchmarks/transformer_flops.py", __doc__.split("\n\n", 2)[2].strip() + "\n\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
