"""What the controller remembers per instance: its endpoint, lease and recent decisions."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from voltana.contract.instances import GpuRef
from voltana.contract.state import Phase


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One clock change the controller attempted for one instance."""

    decided_at_s: float
    sm_clock_mhz: int
    previous_sm_clock_mhz: int
    reason: str
    applied: bool
    # What the agent locked (after clamping) and read back; 0 when not applied.
    applied_sm_clock_mhz: int = 0
    measured_sm_clock_mhz: int = 0
    error: str = ""


@dataclass
class InstanceControl:
    """Mutable control state of one instance (owned by the control loop)."""

    instance_id: str
    phase: Phase
    gpu_key: str
    # Node agent and GPU from the instance's registration; "" = not controllable.
    agent_address: str
    gpu_index: int
    decisions: deque[DecisionRecord]
    # Every GPU of the instance (several for tensor parallelism); empty = the one above.
    gpus: tuple[GpuRef, ...] = ()
    # Clock the GPU runs at (last telemetry sample or agent read-back), MHz.
    current_sm_clock_mhz: int = 0
    # Clock last asked for (0 before the first decision).
    target_sm_clock_mhz: int = 0
    # Requested clock the agent confirmed under our lease; None = (re)apply on the next tick.
    confirmed_sm_clock_mhz: int | None = None
    lease_held: bool = False
    # When the lease was last granted or renewed (controller clock).
    lease_renewed_at_s: float = 0.0
    # Consecutive failed SetClocks, and when the next attempt may start.
    failures: int = 0
    retry_at_s: float = 0.0
    # The last policy error logged, so a persistent one is logged once.
    policy_error: str = ""
    applying: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def controllable(self) -> bool:
        return bool(self.agent_address)

    @property
    def gpu_refs(self) -> tuple[GpuRef, ...]:
        """The GPUs whose clocks the controller sets for this instance."""
        return self.gpus or (GpuRef(self.agent_address, self.gpu_index),)

    def recent_decisions(self, limit: int) -> list[DecisionRecord]:
        """Up to ``limit`` decisions, newest first."""
        newest_first = reversed(self.decisions)
        return [record for record, _ in zip(newest_first, range(limit), strict=False)]
