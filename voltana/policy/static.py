"""Fixed-clock frequency policies (the baselines)."""

from __future__ import annotations

from dataclasses import dataclass

from voltana.contract.state import ClockDecision, InstanceState, SloTarget


@dataclass(frozen=True)
class StaticClockPolicy:
    """Always the same clock: `static-max` uses the GPU's default clock."""

    sm_clock_mhz: int
    label: str = "static"

    @property
    def name(self) -> str:
        return f"{self.label}:{self.sm_clock_mhz}"

    @property
    def is_static(self) -> bool:
        return True

    def decide(self, state: InstanceState, slo: SloTarget, now_s: float) -> ClockDecision:
        return ClockDecision(self.sm_clock_mhz, "fixed clock")
