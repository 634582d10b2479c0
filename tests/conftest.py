"""Shared helpers: the reference FLOP counter and tiny hand-checkable networks."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def reference_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs counted by PyTorch itself (gradients enabled, so fused attention shows its matmuls; its CPU
    attention kernel, which torch's counter has no formula for, counted as its other attention kernels)."""
    from netmorph.graph.record import FLOP_FORMULAS
    was = model.training
    model.eval()
    with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        model(*inputs)
    model.train(was)
    return counter.get_total_flops()


@pytest.fixture
def one_thread():
    """Small tensors: one torch thread is several times faster on a busy machine, and the run does not
    depend on the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def set_gammas(bn: nn.BatchNorm2d, values) -> None:
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(values, dtype=bn.weight.dtype))


class Chain(nn.Module):
    """conv(3->a, k3, pad 1) -> BN -> ReLU -> conv(a->b, k1): small enough to cost by hand."""

    def __init__(self, a: int = 8, b: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, a, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(a)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(a, b, 1)

    def forward(self, x):
        return self.conv2(self.relu(self.bn1(self.conv1(x))))


@pytest.fixture
def x8():
    torch.manual_seed(0)
    return torch.randn(1, 3, 8, 8)


def train_with_prox(model, reg, x, y, steps: int, pull: float, lr: float = 0.05) -> None:
    """``steps`` full-batch SGD steps on cross-entropy, each followed by ``reg.proximal_step`` at the
    strength ``pull / reg.cost()`` (the alive cost of that step)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        reg.proximal_step(lr, pull / reg.cost())
