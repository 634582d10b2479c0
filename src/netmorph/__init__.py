"""netmorph: learn the channel structure of your own PyTorch network under a resource budget."""
from .costs import HARDWARE, Hardware, count_flops, count_params
from .graph import ChannelGraph, GraphRecordError, build_graph

__all__ = ["HARDWARE", "Hardware", "count_flops", "count_params", "ChannelGraph", "GraphRecordError",
           "build_graph"]
__version__ = "0.1.0"
