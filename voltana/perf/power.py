"""GPU power versus SM clock: dynamic power ∝ f·V(f)², with a voltage floor below the knee.

A GPU's DVFS table raises the core voltage with the clock only above a knee; below it the voltage
sits at its floor and dynamic power falls merely linearly with the clock. Measured on A100-SXM4
(Perseus clock sweep, docs/calibration.md): ~0.65 W/MHz above ~1080 MHz, ~0.2 W/MHz below, so the energy
of compute-bound work is lowest near the knee, not at the lowest clock.

V(f) is modelled as linear in f from the floor at the knee to 1 at the maximum clock (relative
units), which reproduces that measured curve within a few percent (tests/test_perf_calibration.py).
Nothing public was measured below 855 MHz on A100; there the model stays in the linear regime.
"""

from __future__ import annotations

from dataclasses import dataclass

from voltana.errors import ConfigError


@dataclass(frozen=True)
class VoltageFrequencyCurve:
    max_clock_mhz: float
    knee_clock_mhz: float
    # Core voltage at (and below) the knee, relative to the voltage at the maximum clock.
    floor_voltage_ratio: float

    def __post_init__(self) -> None:
        if not 0 < self.knee_clock_mhz <= self.max_clock_mhz:
            raise ConfigError(
                f"voltage knee {self.knee_clock_mhz} MHz must lie in (0, {self.max_clock_mhz}] MHz"
            )
        if not 0 < self.floor_voltage_ratio <= 1:
            raise ConfigError(
                f"floor voltage ratio must lie in (0, 1], got {self.floor_voltage_ratio}"
            )

    def voltage_ratio(self, clock_mhz: float) -> float:
        """V(f) / V(f_max)."""
        if clock_mhz <= self.knee_clock_mhz:
            return self.floor_voltage_ratio
        span = self.max_clock_mhz - self.knee_clock_mhz
        above = min(1.0, (clock_mhz - self.knee_clock_mhz) / span) if span > 0 else 1.0
        return self.floor_voltage_ratio + (1.0 - self.floor_voltage_ratio) * above

    def relative_dynamic_power(self, clock_mhz: float) -> float:
        """f·V(f)² relative to the maximum clock (1.0 there)."""
        voltage = self.voltage_ratio(clock_mhz)
        return (max(0.0, clock_mhz) / self.max_clock_mhz) * voltage * voltage
