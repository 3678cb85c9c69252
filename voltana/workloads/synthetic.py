"""Seeded synthetic workloads: Poisson, bursty (gamma) or evenly spaced arrivals.

Arrival processes, all at a mean rate of ``rate_rps``:
- ``poisson``: exponential inter-arrival times (coefficient of variation 1).
- ``bursty``: gamma inter-arrival times with coefficient of variation ``cv`` > 1 giving bursts
  and lulls (cv = 1 is Poisson, cv < 1 is smoother than Poisson).
- ``constant``: exactly ``1 / rate_rps`` between requests.
- ``ramp``: Poisson arrivals whose rate rises linearly over the duration to ``rise`` times its
  starting rate (a load that grows through the run; ``rate_rps`` is still the mean).
- ``diurnal``: Poisson arrivals whose rate follows a sine of period ``period_s`` (default: the
  duration, one day compressed into the run) and relative ``depth`` (default 0.8: the trough is
  0.2 times the mean, the peak 1.8 times it), starting at the trough; ``rate_rps`` is the mean.
The first request arrives at 0.0 s, like every loaded trace.

Token lengths are fixed, or lognormal with a given mean and median (sigma² = 2·ln(mean/median)),
rounded and kept within [1, max_tokens]. Arrivals, input and output lengths come from three
independent streams of one seed, so changing the rate or duration keeps the length sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from voltana.errors import ConfigError, UnknownNameError
from voltana.workloads.request import TraceRequest

ArrivalProcess = Literal["poisson", "bursty", "constant", "ramp", "diurnal"]
ARRIVAL_PROCESSES: tuple[str, ...] = get_args(ArrivalProcess)

DEFAULT_BURSTY_CV = 2.0
DEFAULT_RAMP_RISE = 4.0
DEFAULT_DIURNAL_DEPTH = 0.8
# Too many requests to hold in memory comfortably is almost surely a typo in rate or duration.
MAX_SYNTHETIC_REQUESTS = 10_000_000


@dataclass(frozen=True, slots=True)
class TokenLengths:
    """A token-length distribution: fixed at ``mean``, or lognormal when ``median`` is set."""

    mean: float
    median: float | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.mean) or self.mean < 1:
            raise ConfigError(f"token length mean must be >= 1, got {self.mean:g}")
        if self.median is not None and not 0 < self.median <= self.mean:
            raise ConfigError(
                f"token length median must be in (0, mean={self.mean:g}] for a lognormal, "
                f"got {self.median:g}"
            )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"token length max must be >= 1, got {self.max_tokens}")

    def sample(self, rng: np.random.Generator, count: int) -> npt.NDArray[np.int64]:
        if self.median is None:
            values = np.full(count, float(self.mean))
        else:
            sigma = math.sqrt(2.0 * math.log(self.mean / self.median))
            values = rng.lognormal(mean=math.log(self.median), sigma=sigma, size=count)
        upper = self.max_tokens if self.max_tokens is not None else np.inf
        return np.clip(np.rint(values), 1, upper).astype(np.int64)


# Defaults shaped like the Azure 2023 conversation trace (mean / median tokens).
AZURE_CONV_INPUT = TokenLengths(mean=1155, median=1020)
AZURE_CONV_OUTPUT = TokenLengths(mean=211, median=129)


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    """What to generate; at least one of ``duration_s`` and ``count`` bounds it (first one wins)."""

    process: ArrivalProcess
    rate_rps: float
    duration_s: float | None = None
    count: int | None = None
    cv: float | None = None  # bursty only; default DEFAULT_BURSTY_CV
    rise: float | None = None  # ramp only: end rate / start rate; default DEFAULT_RAMP_RISE
    period_s: float | None = None  # diurnal only: default the duration
    depth: float | None = None  # diurnal only: relative swing in [0, 1]; DEFAULT_DIURNAL_DEPTH
    input_tokens: TokenLengths = field(default=AZURE_CONV_INPUT)
    output_tokens: TokenLengths = field(default=AZURE_CONV_OUTPUT)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.process not in ARRIVAL_PROCESSES:
            raise UnknownNameError("arrival process", self.process, ARRIVAL_PROCESSES)
        if not math.isfinite(self.rate_rps) or self.rate_rps <= 0:
            raise ConfigError(f"rate must be > 0 requests/s, got {self.rate_rps:g}")
        if self.duration_s is None and self.count is None:
            raise ConfigError("give a duration, a count, or both")
        if self.duration_s is not None and not (
            math.isfinite(self.duration_s) and self.duration_s > 0
        ):
            raise ConfigError(f"duration must be > 0 s, got {self.duration_s:g}")
        if self.count is not None and self.count < 1:
            raise ConfigError(f"count must be >= 1, got {self.count}")
        if self.cv is not None:
            if self.process != "bursty":
                raise ConfigError(f"cv applies to bursty arrivals only, not {self.process}")
            if not math.isfinite(self.cv) or self.cv <= 0:
                raise ConfigError(f"cv must be > 0, got {self.cv:g}")
        if self.rise is not None:
            if self.process != "ramp":
                raise ConfigError(f"rise applies to ramp arrivals only, not {self.process}")
            if not math.isfinite(self.rise) or self.rise < 1:
                raise ConfigError(f"rise must be >= 1, got {self.rise:g}")
        if self.process == "ramp" and self.duration_s is None:
            raise ConfigError("ramp arrivals need a duration (the rate rises over it)")
        if (self.period_s is not None or self.depth is not None) and self.process != "diurnal":
            raise ConfigError(
                f"period and depth apply to diurnal arrivals only, not {self.process}"
            )
        if self.period_s is not None and not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ConfigError(f"period must be > 0 s, got {self.period_s:g}")
        if self.depth is not None and not 0 <= self.depth <= 1:
            raise ConfigError(f"depth must be in [0, 1], got {self.depth:g}")
        if self.process == "diurnal" and self.duration_s is None and self.period_s is None:
            raise ConfigError("diurnal arrivals need a duration or a period")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        expected = min(
            self.count if self.count is not None else math.inf,
            self.rate_rps * self.duration_s if self.duration_s is not None else math.inf,
        )
        if expected > MAX_SYNTHETIC_REQUESTS:
            raise ConfigError(
                f"about {expected:.3g} requests asked for; at most {MAX_SYNTHETIC_REQUESTS:,}"
            )

    @property
    def effective_cv(self) -> float:
        if self.process == "poisson":
            return 1.0
        if self.process == "constant":
            return 0.0
        return DEFAULT_BURSTY_CV if self.cv is None else self.cv


def generate_synthetic(spec: SyntheticSpec) -> list[TraceRequest]:
    """The requests of ``spec``; the same spec (seed included) always gives the same requests."""
    arrival_rng, input_rng, output_rng = (
        np.random.default_rng(stream) for stream in np.random.SeedSequence(spec.seed).spawn(3)
    )
    arrivals_s = _arrival_times_s(spec, arrival_rng)
    input_tokens = spec.input_tokens.sample(input_rng, len(arrivals_s))
    output_tokens = spec.output_tokens.sample(output_rng, len(arrivals_s))
    return [
        TraceRequest(
            request_id=index,
            arrival_s=float(arrival_s),
            input_tokens=int(input_count),
            output_tokens=int(output_count),
        )
        for index, (arrival_s, input_count, output_count) in enumerate(
            zip(arrivals_s, input_tokens, output_tokens, strict=True)
        )
    ]


def _arrival_times_s(spec: SyntheticSpec, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Arrival times starting at 0.0, bounded by count and/or [0, duration)."""
    max_count = spec.count if spec.count is not None else MAX_SYNTHETIC_REQUESTS
    duration_s = spec.duration_s if spec.duration_s is not None else math.inf
    if spec.process == "ramp":
        return _ramp_arrivals_s(spec, rng, max_count, duration_s)
    if spec.process == "diurnal":
        return _diurnal_arrivals_s(spec, rng, max_count, duration_s)
    if spec.process == "constant":
        # index / rate rather than a running sum, which would drift by rounding.
        count = max_count
        if math.isfinite(duration_s):
            count = min(count, math.ceil(duration_s * spec.rate_rps) + 1)
        arrivals_s = np.arange(count, dtype=np.float64) / spec.rate_rps
        return arrivals_s[arrivals_s < duration_s]
    gaps: list[npt.NDArray[np.float64]] = []
    drawn = 0
    elapsed_s = 0.0
    # Draw gaps in chunks sized to the expected need until count or duration is covered.
    while drawn < max_count - 1 and elapsed_s < duration_s:
        wanted = max_count - 1 - drawn
        if math.isfinite(duration_s):
            expected = (duration_s - elapsed_s) * spec.rate_rps
            wanted = min(wanted, int(expected * 1.2) + 16)
        chunk = _gaps_s(spec, rng, wanted)
        gaps.append(chunk)
        drawn += wanted
        elapsed_s += float(chunk.sum())
    all_gaps_s = np.concatenate(gaps) if gaps else np.zeros(0)
    arrivals_s = np.concatenate([np.zeros(1), np.cumsum(all_gaps_s)])
    arrivals_s = arrivals_s[arrivals_s < duration_s]
    return arrivals_s[:max_count]


def _gaps_s(spec: SyntheticSpec, rng: np.random.Generator, count: int) -> npt.NDArray[np.float64]:
    mean_gap_s = 1.0 / spec.rate_rps
    if spec.process == "poisson":
        return rng.exponential(mean_gap_s, size=count)
    # Gamma with shape k = 1/cv² and scale mean/k has the wanted mean and coefficient of variation.
    shape = 1.0 / spec.effective_cv**2
    return rng.gamma(shape, mean_gap_s / shape, size=count)


def _ramp_arrivals_s(
    spec: SyntheticSpec, rng: np.random.Generator, max_count: int, duration_s: float
) -> npt.NDArray[np.float64]:
    """A Poisson process with rate r(t) rising linearly from r0 to rise*r0 over the duration,
    mean rate ``rate_rps``: unit-rate arrivals mapped through the inverse cumulative intensity
    (time rescaling)."""
    rise = DEFAULT_RAMP_RISE if spec.rise is None else spec.rise
    start_rps = 2.0 * spec.rate_rps / (1.0 + rise)
    expected = int(spec.rate_rps * duration_s * 1.3) + 16
    unit = np.cumsum(rng.exponential(1.0, size=min(max_count, expected)))
    # Intensity integral: start*t + (rise-1)*start*t^2 / (2*duration) = u, solved for t.
    slope = (rise - 1.0) * start_rps / (2.0 * duration_s)
    if slope > 0:
        times = (-start_rps + np.sqrt(start_rps**2 + 4.0 * slope * unit)) / (2.0 * slope)
    else:
        times = unit / start_rps
    arrivals_s = np.concatenate([np.zeros(1), times])[: len(times)]
    arrivals_s = arrivals_s[arrivals_s < duration_s]
    return arrivals_s[:max_count]


def _diurnal_arrivals_s(
    spec: SyntheticSpec, rng: np.random.Generator, max_count: int, duration_s: float
) -> npt.NDArray[np.float64]:
    """A Poisson process with rate r(t) = mean * (1 - depth * cos(2 pi t / period)), by thinning:
    candidates at the peak rate, each kept with probability r(t) / peak."""
    period_s = spec.period_s if spec.period_s is not None else duration_s
    depth = DEFAULT_DIURNAL_DEPTH if spec.depth is None else spec.depth
    peak_rps = spec.rate_rps * (1.0 + depth)
    horizon_s = duration_s if math.isfinite(duration_s) else max_count / spec.rate_rps * 2.0
    expected = int(peak_rps * horizon_s * 1.2) + 16
    candidates_s = np.cumsum(rng.exponential(1.0 / peak_rps, size=expected))
    rate_rps = spec.rate_rps * (1.0 - depth * np.cos(2.0 * math.pi * candidates_s / period_s))
    kept_s = candidates_s[rng.random(expected) * peak_rps < rate_rps]
    arrivals_s = np.concatenate([np.zeros(1), kept_s])
    arrivals_s = arrivals_s[arrivals_s < horizon_s]
    return arrivals_s[:max_count]
