"""Knowledge distillation of the derived network from the unpruned one (METHODS.md 2.4).

Rule: ``L = (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, the
KL averaged over the batch (``reduction="batchmean"``: summed over classes, divided by the batch
size; the default "mean" would also divide by the number of classes). The teacher runs in eval
mode under ``no_grad`` on the same augmented batch the student sees.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            alpha: float = 0.9, T: float = 4.0) -> torch.Tensor:
    """``(1 - alpha) CE + alpha T^2 KL(teacher || student)`` at temperature ``T``."""
    ce = F.cross_entropy(student_logits, targets)
    kl = F.kl_div(F.log_softmax(student_logits / T, dim=1), F.softmax(teacher_logits.detach() / T, dim=1),
                  reduction="batchmean")
    return (1 - alpha) * ce + alpha * T * T * kl


def kd_criterion(teacher: nn.Module, alpha: float = 0.9, T: float = 4.0):
    """``criterion(outputs, inputs, targets)`` for :func:`netmorph.train.fit`: :func:`kd_loss` against
    the teacher's logits on the same (augmented) inputs, computed under ``no_grad``."""
    def criterion(outputs, inputs, targets):
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        return kd_loss(outputs, teacher_logits, targets, alpha, T)
    return criterion


def distill(student: nn.Module, teacher: nn.Module, train, val, recipe, alpha: float = 0.9, T: float = 4.0,
            **fit_kwargs) -> list[dict]:
    """Train ``student`` with :func:`kd_loss` from ``teacher`` by :func:`netmorph.train.fit`.

    ``train`` and ``val`` are ``(x, y)`` tensors; other keyword arguments go to ``fit``. The teacher
    is put in eval mode for the run (and back in its former mode afterwards); returns fit's history.
    """
    from ..train import fit
    if "criterion" in fit_kwargs:
        raise TypeError("distill sets fit's criterion itself (the distillation loss)")
    was = teacher.training
    teacher.eval()

    try:
        return fit(student, train, val, recipe, criterion=kd_criterion(teacher, alpha, T), **fit_kwargs)
    finally:
        teacher.train(was)
