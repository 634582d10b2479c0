"""Gumbel sampling of TAS's width and depth distributions (METHODS.md 2.2).

Rule: with Gumbel noise ``g ~ Gumbel(0, 1)`` (``-log E``, ``E ~ Exp(1)``) and perturbed logits
``z = (log_softmax(alpha) + g) / tau``, the Gumbel-softmax probabilities are ``softmax(z)``
(:func:`gumbel_softmax`). Two candidates are taken without replacement as the two largest ``z``
(the Gumbel-top-k trick: the first is distributed as ``softmax(alpha)``, the pair as sequential
draws without replacement from it), and their weights are ``softmax`` over just those two ``z``
(the Gumbel-softmax probabilities re-normalised over the pair), so gradients reach ``alpha``
through the weights. The reference code draws the pair with ``multinomial`` from ``softmax(z)``;
both choose the same pair as ``tau -> 0``.
"""
from __future__ import annotations

import torch


def gumbel_noise(shape, generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard Gumbel noise drawn on the CPU from ``generator`` (reproducible), moved to ``device``."""
    e = torch.empty(shape, dtype=torch.float64).exponential_(generator=generator).clamp_min(1e-30)
    return (-e.log()).to(device=device, dtype=dtype)


def perturbed(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(log_softmax(logits) + g) / tau`` along the last dimension."""
    g = gumbel_noise(logits.shape, generator, logits.device, logits.dtype)
    return (torch.log_softmax(logits, -1) + g) / tau


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-softmax probabilities ``softmax((log_softmax(logits) + g) / tau)`` (last dimension)."""
    return torch.softmax(perturbed(logits, tau, generator), -1)


def gumbel_top2(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None):
    """Two candidate indices sampled without replacement, and their re-normalised weights.

    Returns ``(index, weight)``, both of shape ``logits.shape[:-1] + (2,)``; ``weight`` sums to 1
    along the last dimension and is differentiable in ``logits``. A single candidate is returned
    twice with weights ``(1, 0)``.
    """
    if logits.shape[-1] == 1:
        shape = logits.shape[:-1] + (2,)
        index = torch.zeros(shape, dtype=torch.long, device=logits.device)
        weight = torch.cat([torch.ones_like(logits), torch.zeros_like(logits)], -1) + 0 * logits
        return index, weight
    z = perturbed(logits, tau, generator)
    index = z.detach().topk(2, dim=-1).indices
    return index, torch.softmax(z.gather(-1, index), -1)
