"""TAS: Transformable Architecture Search for network pruning (Dong & Yang, NeurIPS 2019).

Pipeline (METHODS.md 2): wrap a trained BatchNorm conv network in :class:`TAS` with a FLOPs target,
:func:`search` its widths and depths, build the found network with
``netmorph.apply_structure(model, tas.derive(), keep="first")`` (or ``tas.derive_model()``), and
train it with :func:`distill` from the unpruned network.
"""
from .cwi import cwi, mix_widths
from .gumbel import gumbel_softmax, gumbel_top2
from .kd import distill, kd_criterion, kd_loss
from .model import TAS, initial_student
from .search import search
from .space import depth_candidates, width_candidates

__all__ = ["TAS", "initial_student", "search", "kd_loss", "kd_criterion", "distill", "cwi", "mix_widths", "gumbel_softmax", "gumbel_top2",
           "depth_candidates", "width_candidates"]
