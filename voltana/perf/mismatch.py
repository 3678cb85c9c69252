"""A GPU that does not behave as its model says: the truth a simulation runs against when the
policies plan with the unaltered model.

A real profile differs from any model per phase, per clock and per load. `ModelMismatch` is a
bounded, clock-dependent distortion of each phase's latency and power: a factor at the GPU's
lowest clock and one at its highest, linear in between (so a model can be right at one end and
wrong at the other, as a memory-bound decode that slows less than predicted at low clocks is).
Idle draw follows the decode power factor (an idle engine is a decode engine with no batch).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from voltana.hardware.gpus import GpuSpec
from voltana.hardware.models import ModelSpec
from voltana.perf.model import IterationEstimate, PerformanceModel, calibrated_clock_range_mhz


@dataclass(frozen=True, slots=True)
class PhaseMismatch:
    """True / modelled ratios of one phase's latency and power, at the lowest and highest clock."""

    latency_at_min: float = 1.0
    latency_at_max: float = 1.0
    power_at_min: float = 1.0
    power_at_max: float = 1.0

    def factors(self, position: float) -> tuple[float, float]:
        """(latency, power) factors at ``position`` in [0, 1] of the clock range."""
        latency = self.latency_at_min + (self.latency_at_max - self.latency_at_min) * position
        power = self.power_at_min + (self.power_at_max - self.power_at_min) * position
        return latency, power

    @classmethod
    def draw(cls, rng: random.Random, bound: float) -> PhaseMismatch:
        def factor() -> float:
            return round(1.0 + rng.uniform(-bound, bound), 4)

        return cls(factor(), factor(), factor(), factor())


@dataclass(frozen=True, slots=True)
class ModelMismatch:
    prefill: PhaseMismatch = PhaseMismatch()
    decode: PhaseMismatch = PhaseMismatch()

    @classmethod
    def draw(cls, rng: random.Random, bound: float = 0.15) -> ModelMismatch:
        """Every factor uniform in [1 - bound, 1 + bound]."""
        return cls(PhaseMismatch.draw(rng, bound), PhaseMismatch.draw(rng, bound))

    @property
    def is_exact(self) -> bool:
        return self == ModelMismatch()

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {"prefill": asdict(self.prefill), "decode": asdict(self.decode)}


class MismatchedPerformanceModel:
    """``believed`` distorted by ``mismatch``: a PerformanceModel for the simulated hardware."""

    def __init__(self, believed: PerformanceModel, mismatch: ModelMismatch) -> None:
        self._believed = believed
        self._mismatch = mismatch
        gpu = believed.gpu
        self._min_mhz = float(gpu.min_sm_clock_mhz)
        self._span_mhz = float(max(1, gpu.max_sm_clock_mhz - gpu.min_sm_clock_mhz))

    @property
    def gpu(self) -> GpuSpec:
        return self._believed.gpu

    @property
    def model(self) -> ModelSpec:
        return self._believed.model

    @property
    def mismatch(self) -> ModelMismatch:
        return self._mismatch

    @property
    def calibrated_clock_range_mhz(self) -> tuple[int, int]:
        """The believed model's: where it rests on measurements is the same whatever the GPU
        truly does (without this, everything that asks - the static-best search, the
        extrapolated-energy share - took the GPU's whole range)."""
        return calibrated_clock_range_mhz(self._believed)

    def _position(self, sm_clock_mhz: float) -> float:
        return min(1.0, max(0.0, (sm_clock_mhz - self._min_mhz) / self._span_mhz))

    @staticmethod
    def _scaled(estimate: IterationEstimate, factors: tuple[float, float]) -> IterationEstimate:
        latency, power = factors
        return IterationEstimate(estimate.latency_s * latency, estimate.power_w * power)

    def prefill_iteration(
        self, new_tokens: int, sm_clock_mhz: float, attention_pairs: float | None = None
    ) -> IterationEstimate:
        estimate = self._believed.prefill_iteration(new_tokens, sm_clock_mhz, attention_pairs)
        return self._scaled(estimate, self._mismatch.prefill.factors(self._position(sm_clock_mhz)))

    def decode_iteration(
        self, batch_size: int, kv_tokens: int, sm_clock_mhz: float
    ) -> IterationEstimate:
        estimate = self._believed.decode_iteration(batch_size, kv_tokens, sm_clock_mhz)
        return self._scaled(estimate, self._mismatch.decode.factors(self._position(sm_clock_mhz)))

    def idle_power_w(self, sm_clock_mhz: float) -> float:
        _, power = self._mismatch.decode.factors(self._position(sm_clock_mhz))
        return self._believed.idle_power_w(sm_clock_mhz) * power

    def kv_capacity_tokens(self) -> int:
        return self._believed.kv_capacity_tokens()
