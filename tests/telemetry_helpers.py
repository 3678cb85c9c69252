"""What the telemetry hardening tests share: a clock moved by hand and a registration."""

from __future__ import annotations

from voltana.contract.state import Phase
from voltana.services.telemetry import InstanceInfo


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def instance_info(instance_id: str, phase: Phase, gpu_index: int) -> InstanceInfo:
    """A registration on GPU ``gpu_index`` of one node agent."""
    return InstanceInfo(
        instance_id=instance_id,
        phase=phase,
        gpu_key="a100-80g",
        engine_url=f"http://10.0.0.5:3000{gpu_index}",
        agent_address="10.0.0.5:50061",
        gpu_index=gpu_index,
    )
