"""Where an instance can be reached and which GPUs it runs on: what the router and the
controller need besides its load, registered with telemetry by each instance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from voltana.contract.state import Phase


class GpuRef(NamedTuple):
    """One GPU: the node agent that controls it and its index there."""

    agent_address: str
    gpu_index: int


# Most GPUs one instance may name (a TP/EP group spanning nodes included).
MAX_INSTANCE_GPUS = 64


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """Where an instance can be reached: what the router and controller need besides its load."""

    instance_id: str
    phase: Phase
    gpu_key: str
    engine_url: str = ""
    # SGLang PD bootstrap endpoint of a prefill instance (empty/0 on decode instances).
    bootstrap_host: str = ""
    bootstrap_port: int = 0
    # gRPC address of the node agent that owns this instance's GPU.
    agent_address: str = ""
    gpu_index: int = 0
    # Engine limits, when known (0 = unknown); load reports that leave them 0 inherit these.
    kv_tokens_capacity: int = 0
    max_running_requests: int = 0
    # Every GPU of a tensor-parallel instance, on one node agent or several (its first entry is
    # agent_address/gpu_index); empty = the one GPU named by agent_address and gpu_index.
    gpus: tuple[GpuRef, ...] = ()

    @property
    def gpu_refs(self) -> tuple[GpuRef, ...]:
        """The instance's GPUs (none without a node agent)."""
        if self.gpus:
            return self.gpus
        return (GpuRef(self.agent_address, self.gpu_index),) if self.agent_address else ()
