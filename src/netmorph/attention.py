"""``split_attention``: ``nn.MultiheadAttention`` rewritten so that its heads can be pruned.

``nn.MultiheadAttention`` ties its head count to ``embed_dim`` (``head_dim = embed_dim // num_heads``,
one fused ``in_proj_weight``) and, in eval mode without gradients, may run a fused kernel that no
recording sees. :func:`split_attention` returns a copy of a model in which every
``nn.MultiheadAttention`` is a :class:`SplitMultiheadAttention`: the same function of the same weights
(query, key and value as three ``nn.Linear`` layers, the products by
``F.scaled_dot_product_attention``), whose heads the channel graph sees and prunes whole
(``rules/attention.py``), each head keeping its ``head_dim``.

What it cannot carry is refused by name: ``add_bias_kv`` and ``add_zero_attn`` (extra key/value
positions). The attention weights ``nn.MultiheadAttention`` returns are averaged over the heads, so
removing a head changes them: the split modules return ``None`` in their place unless
``split_attention(model, weights=True)``, with which a head that reaches those weights is frozen
(``netmorph.explain`` says so).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class SplitMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward (same arguments, same outputs) with separate ``q_proj``,
    ``k_proj``, ``v_proj`` and ``out_proj`` linear layers and a head count free of ``embed_dim``."""

    in_proj_bias = None              # torch's TransformerEncoderLayer reads it: None keeps it off its fused path
    _qkv_same_embed_dim = False

    def __init__(self, mha: nn.MultiheadAttention, weights: bool = False):
        super().__init__()
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("split_attention: nn.MultiheadAttention with add_bias_kv or add_zero_attn is not "
                             "supported (extra key/value positions); leave that module as it is")
        e, h = mha.embed_dim, mha.num_heads
        self.embed_dim, self.num_heads, self.head_dim = e, h, mha.head_dim
        self.batch_first, self.dropout, self.weights = mha.batch_first, mha.dropout, weights
        w = mha.in_proj_weight
        kw = dict(device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype)
        bias = mha.in_proj_bias is not None
        self.q_proj = nn.Linear(e, e, bias=bias, **kw)
        self.k_proj = nn.Linear(mha.kdim, e, bias=bias, **kw)
        self.v_proj = nn.Linear(mha.vdim, e, bias=bias, **kw)
        self.out_proj = nn.Linear(e, e, bias=mha.out_proj.bias is not None, **kw)
        with torch.no_grad():
            for i, (lin, own) in enumerate(((self.q_proj, mha.q_proj_weight), (self.k_proj, mha.k_proj_weight),
                                            (self.v_proj, mha.v_proj_weight))):
                lin.weight.copy_(w[i * e:(i + 1) * e] if w is not None else own)
                if bias:
                    lin.bias.copy_(mha.in_proj_bias[i * e:(i + 1) * e])
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)
        self.train(mha.training)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        length, batch, _ = query.shape            # [L, B, E] from here, as torch's own
        source = key.shape[0]
        q = self.q_proj(query).view(length, batch, -1, self.head_dim).permute(1, 2, 0, 3)
        k = self.k_proj(key).view(source, batch, -1, self.head_dim).permute(1, 2, 0, 3)
        v = self.v_proj(value).view(source, batch, -1, self.head_dim).permute(1, 2, 0, 3)
        mask = _merged_mask(attn_mask, key_padding_mask, batch, length, source, q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if self.weights and need_weights:
            scores = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            attn = scores.softmax(dim=-1)
            y = F.dropout(attn, dropout, self.training) @ v
            weights = attn.mean(dim=1) if average_attn_weights else attn
            weights = weights if batched else weights.squeeze(0)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                               is_causal=bool(is_causal) and mask is None)
        y = self.out_proj(y.permute(2, 0, 1, 3).reshape(length, batch, -1))
        if not batched:
            y = y.squeeze(1)
        elif self.batch_first:
            y = y.transpose(0, 1)
        return y, weights


def _merged_mask(attn_mask, key_padding_mask, batch, length, source, dtype):
    """``attn_mask`` (``[L, S]`` or ``[B * heads, L, S]``) and ``key_padding_mask`` (``[B, S]``), True or
    -inf where a key is not attended, as one additive float mask ``[B, 1 or heads, L, S]``."""
    mask = None
    for m, shape in ((attn_mask, None), (key_padding_mask, (batch, 1, 1, source))):
        if m is None:
            continue
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        else:
            m = m.to(dtype)
        if shape is not None:
            m = m.view(shape)
        elif m.dim() == 3:
            m = m.view(batch, -1, length, source)            # per head: the attention rule then keeps the heads
        mask = m if mask is None else mask + m
    return mask


def split_attention(model: nn.Module, weights: bool = False) -> nn.Module:
    """A copy of ``model`` with every ``nn.MultiheadAttention`` replaced by an equivalent
    :class:`SplitMultiheadAttention` (the original is untouched). ``weights``: keep returning the
    attention weights when asked (``need_weights``); a head that reaches them is then frozen."""
    new = copy.deepcopy(model)
    for name, module in list(new.named_modules()):
        if isinstance(module, nn.MultiheadAttention):
            parent, _, leaf = name.rpartition(".")
            setattr(new.get_submodule(parent) if parent else new, leaf, SplitMultiheadAttention(module, weights))
    return new
