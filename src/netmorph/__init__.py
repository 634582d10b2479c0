"""netmorph: learn the channel structure of your own PyTorch network under a resource budget.

The central object is the channel graph (:func:`build_graph`): the groups of channels a model's
topology ties together. Costs, regularizers, pruning, expansion and search all read it.
"""
# The one place the version is written: pyproject.toml reads it (setuptools dynamic version), and
# ``netmorph --version`` reports the installed distribution's, which is this one.
__version__ = "0.1.0"

from .attention import SplitMultiheadAttention, split_attention
from .costs import HARDWARE, RESOURCES, Hardware, count_flops, count_params
from .expand import expand
from .explain import explain
from .export import export_onnx, export_program
from .graph import ChannelGraph, GraphRecordError, build_graph
from . import models
from .latency import DeviceProfile, profile
from .learner import StructureLearner
from .load import load, save
from .regularizers import (GammaFlopsRegularizer, GammaLatencyRegularizer, GammaModelSizeRegularizer,
                           GroupLassoFlopsRegularizer, GroupLassoLatencyRegularizer,
                           GroupLassoModelSizeRegularizer)
from .resize import apply_structure
from .structure import Structure
from .surgery import PruneReport, prune
from .tas import TAS, distill, kd_loss

__all__ = [
    "HARDWARE", "RESOURCES", "Hardware", "count_flops", "count_params", "explain", "ChannelGraph",
    "GraphRecordError", "build_graph", "models", "Structure", "prune", "PruneReport", "apply_structure", "expand", "load", "save",
    "GammaFlopsRegularizer", "GammaModelSizeRegularizer", "GammaLatencyRegularizer",
    "TAS", "kd_loss", "distill", "GroupLassoFlopsRegularizer", "GroupLassoModelSizeRegularizer", "GroupLassoLatencyRegularizer",
    "DeviceProfile", "profile", "export_onnx", "export_program", "StructureLearner",
    "split_attention", "SplitMultiheadAttention",
]
