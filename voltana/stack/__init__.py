"""In-process assembly of the whole Voltana stack over simulated GPUs and engines."""

from voltana.stack.engine_node import EngineNode, EngineNodeSettings
from voltana.stack.settings import SimStackSettings
from voltana.stack.sim_stack import SimStack, StackInstance
from voltana.stack.sinks import TelemetryInstanceSink

__all__ = [
    "EngineNode",
    "EngineNodeSettings",
    "SimStack",
    "SimStackSettings",
    "StackInstance",
    "TelemetryInstanceSink",
]
