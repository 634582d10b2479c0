"""Turn a model into its channel graph: record the forward, apply one rule per op, group channels."""
from .channel_graph import ChannelGraph, Group, Layer, build_graph
from .record import GraphRecordError, record
from .rules import supported_ops

__all__ = ["ChannelGraph", "Group", "Layer", "build_graph", "GraphRecordError", "record", "supported_ops"]
