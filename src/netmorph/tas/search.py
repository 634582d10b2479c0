"""``search``: TAS's alternating optimisation of weights and architecture (METHODS.md 2.3).

Rule, one step each in turn over the two halves of the training data:
- weights, on a batch of ``train_w``: cross-entropy of ``tas(x)`` (Gumbel-sampled widths and
  depths); SGD with Nesterov momentum 0.9, weight decay ``w_decay``, learning rate cosine from
  ``w_lr`` to 0 over all steps;
- architecture, on a batch of ``train_a``: ``CE + flops_weight * tas.flops_loss()``
  (``flops_weight = 2`` as in the reference code; 1 is the paper's plain sum); Adam, ``a_lr``,
  betas (0.5, 0.999), weight decay ``a_decay``.
Both batches are augmented (random crop with ``crop_padding`` and horizontal flip) when
``augment`` is true, as the reference code does; the images must then be NCHW.
The temperature decays geometrically *per step* from ``tau[0]`` to ``tau[1]`` (the paper decays it
linearly per epoch over hundreds of epochs; over a few epochs a per-epoch schedule jumps).
Batches are random permutations from a generator seeded by ``seed``; ``train_a`` is cycled when it
is the shorter half. ``train_w`` and ``train_a`` may also be loaders of ``(inputs, targets)`` batches
(data that does not fit in memory): then their own batches, order and augmentation are used, an epoch
is ``len(train_w)`` steps, and ``train_a`` is restarted whenever it runs out. Resumable: ``checkpoint(state)`` gets, after every epoch, a dict (``epoch``,
both optimizers, both generators, the history and ``tas.state_dict()``) that ``state=`` takes back.

Every epoch's history row holds :meth:`TAS.diagnostics` (per distribution: top-1 probability,
top-1 minus top-2 margin, entropy over its maximum) and its summary, beside the argmax network's
FLOPs and the expected FLOPs.

Defaults (``a_lr``, ``w_lr`` from the caller, ``tau``) were chosen on the CIFAR-10 ResNet-20 proxy
of ``benchmarks/tas_proxy.py``; its numbers are in docs/benchmarks.md.
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F


def tau_at(step: int, total: int, tau) -> float:
    """The temperature at ``step`` of ``total``: geometric from ``tau[0]`` (first step) to ``tau[1]`` (last)."""
    first, last = tau
    return first if total <= 1 else first * (last / first) ** (step / (total - 1))


def summarize(diagnostics: list[dict]) -> dict:
    """One epoch's distributions in four numbers: the share whose top-1 probability is at least 0.5,
    the mean top-1 minus top-2 margin, the mean and largest entropy over its maximum (1 = uniform)."""
    if not diagnostics:
        return {"decided": 1.0, "margin": 1.0, "entropy": 0.0, "max_entropy": 0.0}
    n = len(diagnostics)
    return {"decided": sum(d["top1"] >= 0.5 for d in diagnostics) / n,
            "margin": sum(d["margin"] for d in diagnostics) / n,
            "entropy": sum(d["entropy"] for d in diagnostics) / n,
            "max_entropy": max(d["entropy"] for d in diagnostics)}


def verdict(history: list[dict]) -> str | None:
    """One line when the search ended undecided (near uniform), with what to try; else None."""
    if not history or "decided" not in history[-1]:      # a search from before the diagnostics
        return None
    last = history[-1]
    if last["decided"] >= 0.8:
        return None
    return (f"the search ended undecided: only {last['decided']:.0%} of its distributions have a top-1 probability "
            f"of 0.5 or more (mean entropy {last['entropy']:.2f} of uniform's 1), so the found structure is close to a "
            "random draw; search longer (--search-epochs) or with a larger architecture learning rate (--arch-lr)")


def search(tas, train_w, train_a, epochs: int, batch_size: int = 64, w_lr: float = 0.1, a_lr: float = 1e-3,
           tau=(10.0, 0.1), seed: int = 0, log=print, on_batch=None, checkpoint=None, state=None,
           flops_weight: float = 2.0, w_decay: float = 5e-4, a_decay: float = 1e-3, stop=None,
           augment: bool = False, crop_padding: int = 4, on_epoch=None) -> list[dict]:
    """Search ``tas`` for ``epochs`` epochs of ``train_w`` (``(x, y)`` tensors; so is ``train_a``).

    ``on_batch(step, steps_per_epoch, weight_loss)`` is called after every step; ``stop()`` is polled
    there too and, when true, ends the search with :class:`netmorph.train.Interrupted` (resume from
    the last epoch's checkpoint). ``on_epoch(row)`` receives each epoch's row. Returns the history (one dict per epoch: tau, mean losses, argmax
    and expected FLOPs).
    """
    from ..train import augment as crop_flip, is_loader, loader_rng_state, set_loader_rng_state, steps_per_epoch
    loaders = is_loader(train_w) or is_loader(train_a)
    if loaders and not (is_loader(train_w) and is_loader(train_a)):
        raise ValueError("search takes train_w and train_a both as (x, y) tensors or both as loaders of batches")
    if not loaders:
        xw, xa = train_w[0], train_a[0]
        if augment and (xw.dim() != 4 or xa.dim() != 4):
            raise ValueError("search(augment=True) crops and flips NCHW images; pass augment=False for other inputs")
    steps = steps_per_epoch(train_w, batch_size)
    total = epochs * steps
    w_opt = torch.optim.SGD(tas.weight_parameters(), lr=w_lr, momentum=0.9, nesterov=True, weight_decay=w_decay)
    a_opt = torch.optim.Adam(tas.arch_parameters(), lr=a_lr, betas=(0.5, 0.999), weight_decay=a_decay)
    generator = torch.Generator().manual_seed(seed)
    tas.generator.manual_seed(seed + 1)
    start, history = 0, []
    if state is not None:
        if "tas" in state:
            tas.load_state_dict(state["tas"])
        w_opt.load_state_dict(state["w_opt"])
        a_opt.load_state_dict(state["a_opt"])
        generator.set_state(state["generator"])
        tas.generator.set_state(state["gumbel"])
        if "torch_rng" in state:                 # the global generator (dropout): resumed as it was
            torch.set_rng_state(state["torch_rng"])
        for data, key in ((train_w, "loader_w"), (train_a, "loader_a")):
            if loaders and state.get(key) is not None:
                set_loader_rng_state(data, state[key])
        start, history = state["epoch"], list(state["history"])
    device = tas.alphas[0].device
    for epoch in range(start, epochs):
        t0 = time.time()
        tas.train()
        sums = {"loss_w": 0.0, "loss_a": 0.0, "ce_a": 0.0}
        pairs = _loader_pairs(train_w, train_a) if loaders else \
            _tensor_pairs(train_w, train_a, batch_size, generator, augment, crop_padding, crop_flip)
        for i, ((bw, yw_b), (ba, ya_b)) in enumerate(pairs):
            for group in w_opt.param_groups:
                group["lr"] = 0.5 * w_lr * (1 + math.cos(math.pi * (epoch * steps + i) / total))
            tas.set_tau(tau_at(epoch * steps + i, total, tau))
            loss_w = F.cross_entropy(tas(bw.to(device)), yw_b.to(device))
            w_opt.zero_grad(set_to_none=True)
            a_opt.zero_grad(set_to_none=True)
            loss_w.backward()
            w_opt.step()
            ce = F.cross_entropy(tas(ba.to(device)), ya_b.to(device))
            loss_a = ce + flops_weight * tas.flops_loss()
            w_opt.zero_grad(set_to_none=True)
            a_opt.zero_grad(set_to_none=True)
            loss_a.backward()
            a_opt.step()
            for key, value in (("loss_w", loss_w), ("loss_a", loss_a), ("ce_a", ce)):
                sums[key] += value.item() / steps
            if on_batch is not None:
                on_batch(i, steps, loss_w.item())
            if stop is not None and stop():
                from ..train import Interrupted
                raise Interrupted({"epoch": epoch, "step": i + 1})
        diag = tas.diagnostics()
        row = {"epoch": epoch + 1, "tau": tas.tau, **sums, "flops": tas.flops(),
               "expected_flops": tas.expected_flops().item(), **summarize(diag), "seconds": time.time() - t0}
        log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        if on_epoch is not None:
            on_epoch(row)
        row["distributions"] = diag
        history.append(row)
        if checkpoint is not None:
            checkpoint(copy.deepcopy({"epoch": epoch + 1, "w_opt": w_opt.state_dict(), "a_opt": a_opt.state_dict(),
                                      "generator": generator.get_state(), "gumbel": tas.generator.get_state(),
                                      "torch_rng": torch.get_rng_state(), "history": history, "tas": tas.state_dict(),
                                      **{key: loader_rng_state(data) for data, key in
                                         ((train_w, "loader_w"), (train_a, "loader_a")) if loaders}}))
    return history


def _tensor_pairs(train_w, train_a, batch_size, generator, augment, crop_padding, crop_flip):
    """One epoch of (weights batch, architecture batch) pairs of in-memory tensors: random orders from
    ``generator``, ``train_a`` cycled when it is the shorter half, both cropped and flipped if asked."""
    (xw, yw), (xa, ya) = train_w, train_a
    order_w = torch.randperm(len(xw), generator=generator)
    order_a = torch.randperm(len(xa), generator=generator)
    for i, iw in enumerate(order_w.split(batch_size)):
        ia = order_a[torch.arange(i * batch_size, i * batch_size + len(iw)) % len(xa)]
        bw, ba = xw[iw], xa[ia]
        if augment:
            bw, ba = crop_flip(bw, crop_padding, True, generator), crop_flip(ba, crop_padding, True, generator)
        yield (bw, yw[iw]), (ba, ya[ia])


def _loader_pairs(train_w, train_a):
    """One epoch of (weights batch, architecture batch) pairs of two loaders: ``train_a`` restarted
    whenever it runs out."""
    from ..train import _pair
    arch = iter(train_a)
    for batch in train_w:
        try:
            other = next(arch)
        except StopIteration:
            arch = iter(train_a)
            other = next(arch)
        yield _pair(batch, "weights"), _pair(other, "architecture")
