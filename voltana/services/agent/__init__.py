"""Node agent: the only privileged process on a GPU host.

Applies SM clocks through a ``voltana.gpu.GpuDevice`` under leases (a watchdog resets a GPU
whose lease lapses), reads power and energy, streams samples to telemetry, and puts every GPU
back to default clocks when it starts and when it stops.
"""

from voltana.services.agent.clock import AgentClock, ManualClock, SystemClock
from voltana.services.agent.clock_manager import ClockChange, ClockManager, GpuClockStatus
from voltana.services.agent.errors import (
    AgentError,
    LeaseConflictError,
    LeaseNotHeldError,
)
from voltana.services.agent.leases import Lease, LeaseTable
from voltana.services.agent.sampler import GpuSampler
from voltana.services.agent.server import AgentService, gpu_key_for
from voltana.services.agent.servicer import AGENT_PRIVILEGED_METHODS, NodeAgentServicer
from voltana.services.agent.settings import AgentBackend, AgentSettings
from voltana.services.agent.sinks import GpuSampleSink, GrpcGpuSampleSink, gpu_sample_to_proto

__all__ = [
    "AGENT_PRIVILEGED_METHODS",
    "AgentBackend",
    "AgentClock",
    "AgentError",
    "AgentService",
    "AgentSettings",
    "ClockChange",
    "ClockManager",
    "GpuClockStatus",
    "GpuSampleSink",
    "GpuSampler",
    "GrpcGpuSampleSink",
    "Lease",
    "LeaseConflictError",
    "LeaseNotHeldError",
    "LeaseTable",
    "ManualClock",
    "NodeAgentServicer",
    "SystemClock",
    "gpu_key_for",
    "gpu_sample_to_proto",
]
