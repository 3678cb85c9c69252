"""`voltana-paper`: the published VoltanaLLM method (EcoFreq + EcoPred + EcoRoute), as published.

Read from the paper and the authors' code (sglang/srt/managers/freq_manager.py, lookup_table.py,
disaggregation/echo_lb_new.py and its demo scripts):

- EcoFreq (per instance): arrival rate above a threshold -> max clock (the threshold is off unless
  set: the authors' demo scripts set it to 1e5-1e8); a waiting request -> max clock; otherwise the
  lowest candidate clock below the maximum whose predicted latency fits the target loosened by the
  margin minus the queueing delay, ``predicted <= slo * (1 + margin) - wait``; none -> max clock.
  With nothing to run it keeps its clock, and after 5 s without activity drops to the lowest.
- EcoPred: per clock, decode ITL = a*batch + b*KV tokens + c per batch segment (CUDA-graph
  sizes), prefill time = a*tokens + c (one segment); a batch outside the profile predicts nothing
  (that clock is skipped).
- EcoRoute: prefill uniformly at random (the authors' load balancer); decode: below one tile
  (128 requests) on every instance, the instance at the lowest clock (then fewest requests); above,
  per instance the lowest clock meeting the target now and after admitting the request, preferring
  instances whose required clock does not rise, consolidating within a clock level, fewest tiles.
- Clocks: 1005/1095/1200/1305/1410 MHz on A100 (the profiled set; the same fractions of the
  maximum clock elsewhere), margin 0.35. Measured latencies are not fed back.

Remaining deviations (the framework, not the method): decisions run on each control tick (50 ms)
from the latest observed state instead of every scheduler iteration from medians of per-iteration
metrics; "waiting requests" means what the published scheduler measured right after forming a
batch - prompts the next batch cannot take (beyond the chunked-prefill budget), decode requests
that are not admitted at the next step (the batch is full, or they waited longer than one) -
since a report taken mid-iteration also counts requests that merely arrived during it; the
prefill "queueing delay" is the age of the oldest waiting request; EcoRoute's
in-flight count per decode instance is running + waiting + placed-but-not-yet-visible requests
(the authors' router counted requests from dispatch to completion), and its "load" is the KV
tokens in use plus those placed requests' prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from voltana.contract.state import (
    ClockDecision,
    ClusterSnapshot,
    InstanceState,
    Placement,
    RequestSpec,
    SloTarget,
)
from voltana.policy.base import PolicyContext, PolicySuite, RoutingPolicy
from voltana.policy.common import fit_predictor, paper_candidate_clocks_mhz
from voltana.policy.predictor import LatencyPredictor
from voltana.policy.routing import NoInstanceError

STALE_AFTER_S = 5.0
MARGIN = 0.35
# EcoRoute's batch tile: decode latency steps at multiples of it.
TILE_REQUESTS = 128


def _lowest_meeting(predicted_ms: np.ndarray, budget_ms: float) -> int | None:
    """Index of the lowest clock below the maximum whose prediction fits (None: none does)."""
    fits = predicted_ms[:-1] <= budget_ms
    return int(np.argmax(fits)) if fits.any() else None


def _idle_decision(clocks: np.ndarray, state: InstanceState, now_s: float) -> ClockDecision:
    """No iteration to measure: keep the clock, after 5 s without metrics drop to the lowest."""
    if now_s - state.last_activity_s > STALE_AFTER_S:
        return ClockDecision(int(clocks[0]), "no metrics for 5 s: lowest clock")
    return ClockDecision(state.sm_clock_mhz or int(clocks[-1]), "no metrics: keep clock")


@dataclass
class EcoFreqPrefill:
    predictor: LatencyPredictor
    margin: float = MARGIN
    # Requests per second (per instance) above which the clock goes to the maximum; None = off.
    arrival_rate_threshold_rps: float | None = None
    # The engine's chunked-prefill budget: prompts beyond it wait for more than one batch.
    batch_tokens: int = 8192
    name: str = "ecofreq-prefill"
    is_static: bool = False

    def decide(self, state: InstanceState, slo: SloTarget, now_s: float) -> ClockDecision:
        clocks = self.predictor.clocks_mhz
        threshold = self.arrival_rate_threshold_rps
        if threshold is not None and state.arrival_rate_rps > threshold:
            return ClockDecision(int(clocks[-1]), "arrival rate above threshold: max clock")
        if state.prefill_backlog(self.batch_tokens):
            return ClockDecision(int(clocks[-1]), "waiting requests: max clock")
        tokens = state.running_prefill_tokens
        if tokens <= 0:
            return _idle_decision(clocks, state, now_s)
        budget_ms = slo.ttft_target_ms(tokens) * (1.0 + self.margin) - state.oldest_wait_ms
        index = _lowest_meeting(self.predictor.prefill_latency_ms(tokens), budget_ms)
        if index is None:
            return ClockDecision(int(clocks[-1]), "no clock meets TTFT: max clock")
        return ClockDecision(int(clocks[index]), "lowest clock meeting TTFT")


@dataclass
class EcoFreqDecode:
    predictor: LatencyPredictor
    margin: float = MARGIN
    name: str = "ecofreq-decode"
    is_static: bool = False

    def decide(self, state: InstanceState, slo: SloTarget, now_s: float) -> ClockDecision:
        clocks = self.predictor.clocks_mhz
        if state.decode_backlog(slo.itl_ms):
            return ClockDecision(int(clocks[-1]), "waiting requests: max clock")
        if state.running_batch <= 0:
            return _idle_decision(clocks, state, now_s)
        predicted = self.predictor.decode_latency_ms(state.running_batch, state.kv_tokens_used)
        index = _lowest_meeting(predicted, slo.itl_ms * (1.0 + self.margin))
        if index is None:
            return ClockDecision(int(clocks[-1]), "no clock meets ITL: max clock")
        return ClockDecision(int(clocks[index]), "lowest clock meeting ITL")


def required_clock_index(
    predictor: LatencyPredictor, batch: float, kv_tokens: float, budget_ms: float
) -> int:
    """Index of the lowest clock meeting ``budget_ms`` (the maximum's when none does)."""
    fits = predictor.decode_latency_ms(int(batch), kv_tokens) <= budget_ms
    return int(np.argmax(fits)) if fits.any() else len(predictor.clocks_mhz) - 1


def inflight_requests(state: InstanceState) -> int:
    """Requests the instance holds or will hold: running, waiting, placed but not yet visible."""
    return state.running_batch + state.queue_len + state.inflight_requests


@dataclass
class EcoRoute:
    """Random prefill; decode where the required clock does not rise (see the module doc)."""

    predictor: LatencyPredictor
    margin: float = MARGIN
    seed: int = 0
    name: str = "ecoroute"
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def place(self, request: RequestSpec, snapshot: ClusterSnapshot) -> Placement:
        if not snapshot.prefill or not snapshot.decode:
            raise NoInstanceError("no prefill or no decode instance available")
        prefill_id = self._rng.choice(list(snapshot.prefill))
        decode, reason, clock_mhz = self._decode(request, list(snapshot.decode.values()))
        return Placement(prefill_id, decode.instance_id, reason, decode_clock_mhz=clock_mhz)

    def _decode(
        self, request: RequestSpec, states: list[InstanceState]
    ) -> tuple[InstanceState, str, int | None]:
        counts = [inflight_requests(s) for s in states]
        if max(counts) < TILE_REQUESTS:
            chosen = min(range(len(states)), key=lambda n: (states[n].sm_clock_mhz, counts[n]))
            return states[chosen], "below one tile: lowest clock", None
        clocks = self.predictor.clocks_mhz
        budget_ms = request.slo.itl_ms * (1.0 + self.margin)
        # (signed clock level, requests): a negative level marks "required clock does not rise".
        levels: list[tuple[int, int]] = []
        for state, count in zip(states, counts, strict=True):
            load = state.kv_tokens_used + state.inflight_tokens
            now = required_clock_index(self.predictor, count, load + 2 * count, budget_ms)
            after = required_clock_index(
                self.predictor, count + 1, load + request.input_tokens + 50 * count, budget_ms
            )
            rises = after > now or after == len(clocks) - 1
            levels.append((after + 1 if rises else -(now + 1), count))

        def tiles(count: int) -> int:
            return (count + TILE_REQUESTS - 1) // TILE_REQUESTS

        order = sorted(
            range(len(states)),
            key=lambda n: (abs(levels[n][0]), levels[n][0], tiles(levels[n][1]), -levels[n][1]),
        )
        if abs(levels[order[-1]][0]) - abs(levels[order[0]][0]) > 1:
            chosen = order[0]  # clock levels far apart: the lowest one
        else:
            chosen = min(
                range(len(states)),
                key=lambda n: (levels[n][0], tiles(levels[n][1]), -levels[n][1]),
            )
        level = levels[chosen][0]
        reason = "decode clock stays" if level < 0 else "every decode clock rises: lowest"
        return states[chosen], reason, int(clocks[abs(level) - 1])


def build_paper_suite(
    context: PolicyContext,
    router: RoutingPolicy | None,
    *,
    clocks_mhz: tuple[int, ...] | None = None,
    name: str = "voltana-paper",
    itl_margin: float = MARGIN,
) -> PolicySuite:
    """The published method; ``clocks_mhz`` replaces its 5 candidate clocks (the full-range
    ablation), ``itl_margin`` the published +35 % loosening of the ITL target (decode clock
    and EcoRoute; the TTFT margin stays)."""
    clocks = clocks_mhz or paper_candidate_clocks_mhz(context.gpu, context.clock_range_mhz)
    predictor = fit_predictor(context.perf, clocks, max_batch=context.max_running_requests)
    return PolicySuite(
        name,
        EcoFreqPrefill(predictor),
        EcoFreqDecode(predictor, margin=itl_margin),
        router or EcoRoute(predictor, margin=itl_margin),
    )


def build_paper_suite_m0(
    context: PolicyContext,
    router: RoutingPolicy | None,
    *,
    clocks_mhz: tuple[int, ...] | None = None,
    name: str = "voltana-paper-m0",
) -> PolicySuite:
    """`voltana-paper-m0`: the published method aiming at the ITL target itself (margin 0),
    the target it is scored against."""
    return build_paper_suite(context, router, clocks_mhz=clocks_mhz, name=name, itl_margin=0.0)
