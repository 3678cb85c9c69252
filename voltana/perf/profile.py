"""Latency/power profiles: tables of measurements versus clock and batch.

A profile comes from a sweep of any PerformanceModel (here, the analytical one) or from a real GPU
(same columns, CSV). `ProfiledPerformanceModel` turns a profile back into a PerformanceModel, so a
measured table can replace the analytical model anywhere; the predictors fit the same table.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from voltana.errors import ConfigError
from voltana.hardware.gpus import GpuSpec
from voltana.hardware.models import ModelSpec
from voltana.perf.analytical import cuda_graph_batch_sizes
from voltana.perf.model import IterationEstimate, PerformanceModel


@dataclass(frozen=True, slots=True)
class ProfilePoint:
    phase: str  # "prefill" or "decode"
    sm_clock_mhz: int
    batch_size: int  # decode: running requests; prefill: 1
    tokens: int  # decode: KV tokens held by the batch; prefill: new tokens
    latency_ms: float
    power_w: float


@dataclass(frozen=True)
class ProfileTable:
    points: tuple[ProfilePoint, ...]

    def phase(self, phase: str) -> list[ProfilePoint]:
        return [p for p in self.points if p.phase == phase]

    def clocks_mhz(self, phase: str) -> list[int]:
        return sorted({p.sm_clock_mhz for p in self.points if p.phase == phase})

    def write_csv(self, path: Path, comments: Sequence[str] = ()) -> None:
        """The table as CSV, after ``comments`` (each written as a ``# `` line)."""
        with path.open("w", newline="") as handle:
            for comment in comments:
                handle.write(f"# {comment}\n")
            writer = csv.DictWriter(handle, [f.name for f in fields(ProfilePoint)])
            writer.writeheader()
            for point in self.points:
                writer.writerow(asdict(point))

    @classmethod
    def read_csv(cls, path: Path) -> ProfileTable:
        """Rows of a profile CSV; ``#`` lines (a measured profile's metadata) are skipped."""
        points = []
        try:
            with path.open(newline="") as handle:
                numbered = [
                    (number, text)
                    for number, text in enumerate(handle, start=1)
                    if not text.startswith("#")
                ]
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
        reader = csv.DictReader(text for _, text in numbered)
        for (line, _), row in zip(numbered[1:], reader, strict=False):
            try:
                point = ProfilePoint(
                    phase=row["phase"],
                    sm_clock_mhz=int(row["sm_clock_mhz"]),
                    batch_size=int(row["batch_size"]),
                    tokens=int(row["tokens"]),
                    latency_ms=float(row["latency_ms"]),
                    power_w=float(row["power_w"]),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"{path}:{line}: bad profile row ({exc})") from None
            problem = _point_problem(point)
            if problem:
                raise ConfigError(f"{path}:{line}: bad profile row ({problem})")
            points.append(point)
        return cls(tuple(points))


PROFILE_PHASES = ("prefill", "decode", "idle")


def _point_problem(point: ProfilePoint) -> str:
    if point.phase not in PROFILE_PHASES:
        return f"phase {point.phase!r} is not one of {', '.join(PROFILE_PHASES)}"
    if point.sm_clock_mhz <= 0 or point.batch_size < 0 or point.tokens < 0:
        return "clock must be > 0, batch size and tokens >= 0"
    if not (math.isfinite(point.latency_ms) and point.latency_ms >= 0):
        return f"latency_ms must be a finite number >= 0, got {point.latency_ms}"
    if not (math.isfinite(point.power_w) and point.power_w >= 0):
        return f"power_w must be a finite number >= 0, got {point.power_w}"
    return ""


def decode_batch_segments(max_cuda_graph_batch: int, max_batch: int) -> tuple[int, ...]:
    """Upper bounds of the decode latency segments: each CUDA-graph size up to the largest graph,
    then one eager segment (no padding, latency linear in the batch) up to ``max_batch``."""
    sizes = [s for s in cuda_graph_batch_sizes(max_cuda_graph_batch) if s <= max_batch]
    if not sizes or sizes[-1] < max_batch:
        sizes.append(max_batch)
    return tuple(sizes)


def decode_sweep_batches(max_batch: int = 512, max_cuda_graph_batch: int = 512) -> list[int]:
    """Batch sizes that cover every decode segment: its first and last size (and the middle of
    the eager segment, whose fit is a line over a wide range)."""
    segments = decode_batch_segments(max_cuda_graph_batch, max_batch)
    batches = {1}
    for lower, upper in itertools.pairwise(segments):
        batches.update({lower + 1, upper})
        if upper - lower > 16:
            batches.add((lower + upper) // 2)
    return sorted(batches)


def sweep_profile(
    perf: PerformanceModel,
    clocks_mhz: Sequence[int],
    *,
    max_batch: int = 1024,
    max_cuda_graph_batch: int = 512,
    context_tokens: Iterable[int] = (256, 1024, 2048, 4096),
    prefill_tokens: Iterable[int] = (64, 256, 512, 1024, 2048, 4096, 8192),
) -> ProfileTable:
    """What a profiling run on hardware would record, taken from ``perf``: every clock, decode
    batches up to ``max_batch`` (the engine's `max_running_requests`; predictors treat larger
    batches as unknown) at several contexts per request, within the KV capacity."""
    capacity = perf.kv_capacity_tokens()
    contexts = tuple(context_tokens)
    points: list[ProfilePoint] = []
    for clock in clocks_mhz:
        for tokens in prefill_tokens:
            estimate = perf.prefill_iteration(tokens, clock)
            points.append(
                ProfilePoint(
                    "prefill", clock, 1, tokens, estimate.latency_s * 1e3, estimate.power_w
                )
            )
        for batch in decode_sweep_batches(max_batch, max_cuda_graph_batch):
            for context in contexts:
                kv_tokens = min(capacity, batch * context)
                estimate = perf.decode_iteration(batch, kv_tokens, clock)
                points.append(
                    ProfilePoint(
                        "decode",
                        clock,
                        batch,
                        kv_tokens,
                        estimate.latency_s * 1e3,
                        estimate.power_w,
                    )
                )
    return ProfileTable(tuple(points))


class ProfiledPerformanceModel:
    """A PerformanceModel that interpolates a profile (e.g. measured on a real GPU).

    Decode: nearest profiled batch at or above the request (graph padding), linear in KV tokens;
    prefill: linear interpolation in tokens; both linear between profiled clocks.
    """

    def __init__(
        self,
        gpu: GpuSpec,
        model: ModelSpec,
        table: ProfileTable,
        *,
        kv_capacity_tokens: int,
        idle_power_w_by_clock: dict[int, float],
    ) -> None:
        self._gpu = gpu
        self._model = model
        self._kv_capacity = kv_capacity_tokens
        self._idle = sorted(idle_power_w_by_clock.items())
        self._prefill: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._decode: dict[int, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        for clock in table.clocks_mhz("prefill"):
            rows = sorted(
                (p.tokens, p.latency_ms, p.power_w)
                for p in table.points
                if p.phase == "prefill" and p.sm_clock_mhz == clock
            )
            self._prefill[clock] = tuple(np.array(c, dtype=float) for c in zip(*rows, strict=True))  # type: ignore[assignment]
        for point in table.phase("decode"):
            by_batch = self._decode.setdefault(point.sm_clock_mhz, {})
            by_batch.setdefault(point.batch_size, ([], [], []))  # type: ignore[arg-type]
        for clock, by_batch in self._decode.items():
            for batch in list(by_batch):
                rows = sorted(
                    (p.tokens, p.latency_ms, p.power_w)
                    for p in table.points
                    if p.phase == "decode" and p.sm_clock_mhz == clock and p.batch_size == batch
                )
                by_batch[batch] = tuple(np.array(c, dtype=float) for c in zip(*rows, strict=True))  # type: ignore[assignment]
        if not self._prefill or not self._decode:
            raise ConfigError("a profile needs prefill and decode points")
        self._prefill_clocks = sorted(self._prefill)
        self._decode_clocks = sorted(self._decode)

    @property
    def gpu(self) -> GpuSpec:
        return self._gpu

    @property
    def model(self) -> ModelSpec:
        return self._model

    @property
    def calibrated_clock_range_mhz(self) -> tuple[int, int]:
        """The clocks the profile measured: between them it interpolates, beyond it repeats
        the nearest measured clock."""
        clocks = sorted({*self._prefill_clocks, *self._decode_clocks})
        return clocks[0], clocks[-1]

    @staticmethod
    def _bracket(clocks: list[int], clock: float) -> tuple[int, int, float]:
        index = bisect.bisect_left(clocks, clock)
        if index <= 0:
            return clocks[0], clocks[0], 0.0
        if index >= len(clocks):
            return clocks[-1], clocks[-1], 0.0
        low, high = clocks[index - 1], clocks[index]
        return low, high, (clock - low) / (high - low)

    def prefill_iteration(
        self, new_tokens: int, sm_clock_mhz: float, attention_pairs: float | None = None
    ) -> IterationEstimate:
        low, high, weight = self._bracket(self._prefill_clocks, sm_clock_mhz)

        def at(clock: int) -> tuple[float, float]:
            tokens, latency, power = self._prefill[clock]
            return (
                float(np.interp(new_tokens, tokens, latency)),
                float(np.interp(new_tokens, tokens, power)),
            )

        (lat_low, pow_low), (lat_high, pow_high) = at(low), at(high)
        latency_ms = lat_low + (lat_high - lat_low) * weight
        return IterationEstimate(latency_ms / 1e3, pow_low + (pow_high - pow_low) * weight)

    def decode_iteration(
        self, batch_size: int, kv_tokens: int, sm_clock_mhz: float
    ) -> IterationEstimate:
        if batch_size <= 0:
            return IterationEstimate(0.0, self.idle_power_w(sm_clock_mhz))
        low, high, weight = self._bracket(self._decode_clocks, sm_clock_mhz)

        def at(clock: int) -> tuple[float, float]:
            by_batch = self._decode[clock]
            batches = sorted(by_batch)
            index = min(bisect.bisect_left(batches, batch_size), len(batches) - 1)
            tokens, latency, power = by_batch[batches[index]]
            return (
                float(np.interp(kv_tokens, tokens, latency)),
                float(np.interp(kv_tokens, tokens, power)),
            )

        (lat_low, pow_low), (lat_high, pow_high) = at(low), at(high)
        latency_ms = lat_low + (lat_high - lat_low) * weight
        return IterationEstimate(latency_ms / 1e3, pow_low + (pow_high - pow_low) * weight)

    def idle_power_w(self, sm_clock_mhz: float) -> float:
        clocks = [c for c, _ in self._idle]
        powers = [p for _, p in self._idle]
        return float(np.interp(sm_clock_mhz, clocks, powers))

    def kv_capacity_tokens(self) -> int:
        return self._kv_capacity
