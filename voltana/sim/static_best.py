"""`static-best`: the cheapest fixed prefill/decode clock pair in hindsight, for one router.

(On a cluster of colocated instances only, the cheapest single clock: `_colocated_best`. In a
mixed cluster the colocated instances run the higher clock of the pair searched.)

Not an online policy: it needs the whole workload up front. It answers "what would the best
static configuration have achieved with this router?", the strongest static baseline; a
dynamic policy is compared with the one searched for its own router (`static-best+<router>-
router`). The SLO target is 99% joint attainment, or 0.5 points below `static-max` (same
router) when even the maximum clock cannot reach 99% on this workload.

The search covers every clock the GPU supports inside the allowed range (the model's calibrated
range unless extrapolation is allowed) for both phases, and is exact under three properties of
a fixed router and fixed clocks (docs/policies.md measures how far they hold in the simulator):

- (M) joint SLO attainment does not fall when the prefill clock rises, nor when the decode
  clock rises up to d_G below (above d_G the decode clock is not assumed monotone: it moves
  TTFT through decode admission timing, by up to ~0.5 point);
- (S) each phase's GPUs' energy depends on its own clock: E(p, d) = F(p) + G(d);
- (U) F and G are unimodal on the clock grid (fall, then rise).

Two golden-section searches find p_F and d_G, the minimisers of F and G, each probing its
phase with the other phase at the top clock (where S holds best). The optimum (p*, d*) has p* >= p_F and d* >= d_G: moving
a clock towards its minimiser lowers energy and (M) keeps the target. No pair below p_first,
the lowest prefill clock meeting the target with the top decode clock (bisection, M), meets
it - taking the top decode clock as the one best for attainment, true up to the noise above.
At each prefill clock from p_first up the cheapest pair is the lowest decode clock >= d_G
meeting the target (G rises there, U), found by scanning upwards. A pair whose F(p) + G(d)
already exceeds the best pair found is never simulated, and once F(p) + G(d_G) does, every
higher prefill clock loses too (F rises, U). Every candidate is simulated: the answer's energy
is measured, not added up from F and G.
`exhaustive_static_best` simulates every pair, the brute force this is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from voltana.contract.state import SloTarget
from voltana.perf.model import PerformanceModel
from voltana.policy.registry import STATIC_BEST
from voltana.report import summarize
from voltana.sim.cluster import ClusterConfig
from voltana.sim.run import policy_context, run_policy
from voltana.sim.simulator import ProgressCallback, SimulationResult
from voltana.workloads.request import TraceRequest

__all__ = ["STATIC_BEST", "StaticBest", "exhaustive_static_best", "find_static_best"]


@dataclass(frozen=True)
class PairRun:
    """One simulated fixed pair: its joint attainment and energy, total and per phase."""

    attainment: float
    energy_j: float
    prefill_energy_j: float
    decode_energy_j: float
    result: SimulationResult


@dataclass(frozen=True)
class StaticBest:
    prefill_mhz: int
    decode_mhz: int
    target_attainment: float
    result: SimulationResult
    simulations: int
    router: str | None = None
    # Every pair simulated, (prefill MHz, decode MHz) -> run (for checks and reports).
    evaluated: dict[tuple[int, int], PairRun] = field(default_factory=dict, repr=False)
    # Colocated instances only: one clock (prefill_mhz == decode_mhz).
    colocated: bool = False

    @property
    def policy_name(self) -> str:
        return f"static:{self.prefill_mhz}/{self.decode_mhz}"

    def label(self) -> str:
        """The row's name: `static-best[+<router>-router](<prefill>/<decode>)`, or
        `(<clock>)` on colocated instances only."""
        suffix = f"+{self.router}-router" if self.router else ""
        clocks = (
            f"{self.prefill_mhz}" if self.colocated else f"{self.prefill_mhz}/{self.decode_mhz}"
        )
        return f"{STATIC_BEST}{suffix}({clocks})"

    def summary(self) -> dict[str, object]:
        return {
            "prefill_mhz": self.prefill_mhz,
            "decode_mhz": self.decode_mhz,
            "router": self.router or "round-robin",
            "target_attainment": self.target_attainment,
            "simulations": self.simulations,
        }


def _attainment(result: SimulationResult, slo: SloTarget) -> float:
    return float(summarize(result.outcome(), slo)["slo_attainment"])


class _PairRunner:
    """Simulates fixed pairs for one workload and router, each pair once (cached)."""

    def __init__(
        self,
        requests: Sequence[TraceRequest],
        config: ClusterConfig,
        perf: PerformanceModel,
        router: str | None,
        seed: int,
        progress: ProgressCallback | None,
    ) -> None:
        self._simulate: Callable[[int, int], SimulationResult] = lambda p, d: run_policy(
            f"static:{p}/{d}", requests, config, perf, router=router, seed=seed
        )
        self._slo = config.slo
        self._progress = progress
        self.runs: dict[tuple[int, int], PairRun] = {}

    def __call__(self, prefill_mhz: int, decode_mhz: int) -> PairRun:
        key = (prefill_mhz, decode_mhz)
        if key not in self.runs:
            result = self._simulate(prefill_mhz, decode_mhz)
            prefill_j = sum(
                energy
                for instance_id, energy in zip(
                    result.instance_ids, result.energy_j_by_instance, strict=True
                )
                if instance_id.startswith("prefill")
            )
            self.runs[key] = PairRun(
                _attainment(result, self._slo),
                result.energy_j,
                prefill_j,
                result.energy_j - prefill_j,
                result,
            )
            if self._progress:  # the number of runs is not known ahead: approach 1
                self._progress(len(self.runs) / (len(self.runs) + 8))
        return self.runs[key]


class _GoldenSearch:
    """Golden-section search for the minimiser of a unimodal function on ``range(size)``,
    asking for the points it needs rather than calling the function (two searches then share
    simulations)."""

    RATIO = (math.sqrt(5) - 1) / 2

    def __init__(self, size: int) -> None:
        self.low, self.high = 0, size - 1

    @property
    def done(self) -> bool:
        return self.high - self.low <= 2

    def wanted(self) -> list[int]:
        if self.done:
            return list(range(self.low, self.high + 1))
        span = self.high - self.low
        left = self.low + round(span * (1 - self.RATIO))
        return [left, max(left + 1, self.low + round(span * self.RATIO))]

    def narrow(self, value: Callable[[int], float]) -> None:
        left, right = self.wanted()
        if value(left) < value(right):
            self.high = right  # the minimum is left of ``right``
        elif value(left) > value(right):
            self.low = left
        else:  # equal at both probes: the minimum lies between them
            self.low, self.high = left, right

    def minimiser(self, value: Callable[[int], float]) -> int:
        return min(self.wanted(), key=value)


def _phase_minima(runner: _PairRunner, clocks: Sequence[int]) -> tuple[int, int]:
    """Indices of the clocks minimising F (prefill GPUs' energy) and G (decode GPUs'), by two
    golden-section searches, each probing its phase with the other at the top clock: S holds
    least there (a far too slow other phase stretches the run, and its idle tail lands in the
    probed phase's energy - measured: prefill at 210 MHz inflated G and hid a cheaper decode
    clock when the probes shared runs)."""
    top = clocks[-1]
    prefill = _GoldenSearch(len(clocks))
    decode = _GoldenSearch(len(clocks))

    def f_j(index: int) -> float:
        return runner(clocks[index], top).prefill_energy_j

    def g_j(index: int) -> float:
        return runner(top, clocks[index]).decode_energy_j

    for search, value in ((prefill, f_j), (decode, g_j)):
        while not search.done:
            search.narrow(value)
    return prefill.minimiser(f_j), decode.minimiser(g_j)


def find_static_best(
    requests: Sequence[TraceRequest],
    config: ClusterConfig,
    perf: PerformanceModel,
    *,
    router: str | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> StaticBest:
    """The cheapest fixed pair meeting the target for ``router`` (None: round-robin, the
    static policies' own), exact under M, S and U (module doc)."""
    clocks = _allowed_clocks(config, perf)
    run = _PairRunner(requests, config, perf, router, seed, progress)
    top = len(clocks) - 1
    max_mhz = config.gpu.default_sm_clock_mhz
    baseline = run(max_mhz, max_mhz)
    target = min(0.99, baseline.attainment - 0.005)
    if config.num_prefill == 0:
        return _colocated_best(run, clocks, target, router, progress)

    def pair(p: int, d: int) -> PairRun:
        return run(clocks[p], clocks[d])

    def meets(p: int, d: int) -> bool:
        return pair(p, d).attainment >= target

    p_low, d_low = _phase_minima(run, clocks)
    best: tuple[float, int, int] = (baseline.energy_j, top, top)

    def known_energy(phase: int, index: int) -> float | None:
        """F(p) (phase 0) or G(d) (phase 1) from any pair already simulated there (by S)."""
        for key, known in run.runs.items():
            if key[phase] == clocks[index]:
                return known.prefill_energy_j if phase == 0 else known.decode_energy_j
        return None

    # The lowest prefill clock >= p_low at which the top decode clock meets the target
    # (bisection, by M in p); below it no pair does.
    if meets(p_low, top):
        p_first = p_low
    else:
        low, high = p_low, top  # misses at low, meets at high (the baseline's prefill clock)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if meets(middle, top) else (middle, high)
        p_first = high
    for p in range(p_first, top + 1):
        # At p the cheapest pair is the lowest decode clock >= d_low meeting the target (G
        # rises from d_low, by U); a pair whose F(p) + G(d) already loses is never simulated.
        for d in range(d_low, top + 1):
            f_j, g_j = known_energy(0, p), known_energy(1, d)
            if f_j is not None and g_j is not None and f_j + g_j >= best[0]:
                break
            candidate = pair(p, d)
            if candidate.attainment >= target:
                if candidate.energy_j < best[0]:
                    best = (candidate.energy_j, p, d)
                break
        f_j, g_low_j = known_energy(0, p), known_energy(1, d_low)
        # F rises from p_low (U): once F(p) + G(d_low) loses, every higher prefill clock does.
        if f_j is not None and g_low_j is not None and f_j + g_low_j >= best[0]:
            break
    _, p, d = best
    if progress:
        progress(1.0)
    return StaticBest(
        clocks[p], clocks[d], target, pair(p, d).result, len(run.runs), router, dict(run.runs)
    )


def _colocated_best(
    run: _PairRunner,
    clocks: Sequence[int],
    target: float,
    router: str | None,
    progress: ProgressCallback | None,
) -> StaticBest:
    """Only colocated instances: one clock each, every instance the same. Energy is unimodal
    in it (U) and attainment does not fall as it rises (M), so the cheapest clock meeting the
    target is the energy minimiser (golden section) or, when that misses, the lowest clock
    above it that meets the target (bisection)."""
    top = len(clocks) - 1

    def energy_j(index: int) -> float:
        return run(clocks[index], clocks[index]).energy_j

    def meets(index: int) -> bool:
        return run(clocks[index], clocks[index]).attainment >= target

    search = _GoldenSearch(len(clocks))
    while not search.done:
        search.narrow(energy_j)
    best = search.minimiser(energy_j)
    if not meets(best):
        low, high = best, top  # misses at low; the top clock is the baseline's
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if meets(middle) else (middle, high)
        best = high
    if progress:
        progress(1.0)
    clock_mhz = clocks[best]
    return StaticBest(
        clock_mhz,
        clock_mhz,
        target,
        run(clock_mhz, clock_mhz).result,
        len(run.runs),
        router,
        dict(run.runs),
        colocated=True,
    )


def _allowed_clocks(config: ClusterConfig, perf: PerformanceModel) -> list[int]:
    """Every clock the GPU supports in the allowed range (calibrated unless extrapolating)."""
    return list(policy_context(config, perf).supported_clocks_mhz)


def exhaustive_static_best(
    requests: Sequence[TraceRequest],
    config: ClusterConfig,
    perf: PerformanceModel,
    *,
    router: str | None = None,
    seed: int = 0,
) -> StaticBest:
    """Every allowed pair simulated: the brute force `find_static_best` is checked against."""
    clocks = _allowed_clocks(config, perf)
    run = _PairRunner(requests, config, perf, router, seed, None)
    max_mhz = config.gpu.default_sm_clock_mhz
    target = min(0.99, run(max_mhz, max_mhz).attainment - 0.005)
    feasible = [
        (run(p, d).energy_j, p, d) for p in clocks for d in clocks if run(p, d).attainment >= target
    ]
    _, p, d = min(feasible)
    return StaticBest(p, d, target, run(p, d).result, len(run.runs), router, dict(run.runs))
