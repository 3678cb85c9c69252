"""`voltana-paper`: the published VoltanaLLM method (EcoFreq + EcoPred + EcoRoute), faithfully.

- EcoFreq: queue non-empty or arrival rate above a threshold -> max clock; otherwise the lowest
  clock of a small candidate set whose predicted latency, padded by the margin, fits the SLO minus
  the queueing delay; none fits -> max clock; no activity for 5 s -> lowest candidate.
  The margin pads the prediction (predicted * (1 + margin) <= budget) rather than loosening the
  SLO (SLO * (1 + margin)), which read literally would let latency exceed the target.
- EcoPred: per-clock piecewise-linear fits, segments at the CUDA-graph sizes (predictor.py).
- EcoRoute: decode instance whose required clock does not rise when the request joins.
Measured latencies are not fed back, exactly as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voltana.policy.base import PolicyContext, PolicySuite, RoutingPolicy
from voltana.policy.common import fit_predictor, paper_candidate_clocks_mhz
from voltana.policy.predictor import LatencyPredictor
from voltana.policy.routing import NoInstanceError, prefill_load
from voltana.policy.state import (
    ClockDecision,
    ClusterSnapshot,
    InstanceState,
    Placement,
    RequestSpec,
    SloTarget,
)

STALE_AFTER_S = 5.0


@dataclass
class EcoFreqPrefill:
    predictor: LatencyPredictor
    margin: float = 0.35
    arrival_rate_threshold_rps: float = float("inf")
    name: str = "ecofreq-prefill"
    is_static: bool = False

    def decide(self, state: InstanceState, slo: SloTarget, now_s: float) -> ClockDecision:
        clocks = self.predictor.clocks_mhz
        if now_s - state.last_activity_s > STALE_AFTER_S and state.is_idle:
            return ClockDecision(int(clocks[0]), "no activity: lowest clock")
        if state.queue_len > 0 or state.arrival_rate_rps > self.arrival_rate_threshold_rps:
            return ClockDecision(int(clocks[-1]), "queue or high arrival rate: max clock")
        tokens = state.running_prefill_tokens + state.queued_tokens
        if tokens == 0:
            return ClockDecision(int(clocks[0]), "idle: lowest clock")
        predicted = self.predictor.prefill_latency_ms(tokens) * (1.0 + self.margin)
        feasible = predicted <= slo.ttft_ms - state.oldest_wait_ms
        if not feasible.any():
            return ClockDecision(int(clocks[-1]), "no clock meets TTFT: max clock")
        return ClockDecision(int(clocks[int(np.argmax(feasible))]), "lowest clock meeting TTFT")


@dataclass
class EcoFreqDecode:
    predictor: LatencyPredictor
    margin: float = 0.35
    name: str = "ecofreq-decode"
    is_static: bool = False

    def decide(self, state: InstanceState, slo: SloTarget, now_s: float) -> ClockDecision:
        clocks = self.predictor.clocks_mhz
        if state.is_idle:
            return ClockDecision(int(clocks[0]), "idle: lowest clock")
        if state.queue_len > 0:
            return ClockDecision(int(clocks[-1]), "admission queue: max clock")
        predicted = self.predictor.decode_latency_ms(state.running_batch, state.kv_tokens_used)
        feasible = predicted * (1.0 + self.margin) <= slo.itl_ms
        if not feasible.any():
            return ClockDecision(int(clocks[-1]), "no clock meets ITL: max clock")
        return ClockDecision(int(clocks[int(np.argmax(feasible))]), "lowest clock meeting ITL")


def required_clock_index(
    predictor: LatencyPredictor, batch: int, kv_tokens: float, itl_ms: float, margin: float
) -> int:
    """Index of the lowest clock meeting the ITL target (len(clocks) when none does)."""
    if batch <= 0:
        return 0
    feasible = predictor.decode_latency_ms(batch, kv_tokens) * (1.0 + margin) <= itl_ms
    return int(np.argmax(feasible)) if feasible.any() else len(predictor.clocks_mhz)


@dataclass
class EcoRoute:
    """Least-loaded prefill; decode where the required clock does not rise."""

    predictor: LatencyPredictor
    margin: float = 0.35
    name: str = "ecoroute"

    def place(self, request: RequestSpec, snapshot: ClusterSnapshot) -> Placement:
        if not snapshot.prefill or not snapshot.decode:
            raise NoInstanceError("no prefill or no decode instance available")
        prefill = min(snapshot.prefill.values(), key=prefill_load)
        itl_ms = request.slo.itl_ms
        added_kv = request.input_tokens + 1
        best: tuple[int, int, int, int] | None = None
        best_state: InstanceState | None = None
        for state in snapshot.decode.values():
            now = required_clock_index(
                self.predictor, state.running_batch, state.kv_tokens_used, itl_ms, self.margin
            )
            after = required_clock_index(
                self.predictor,
                state.running_batch + 1,
                state.kv_tokens_used + added_kv,
                itl_ms,
                self.margin,
            )
            rises = 1 if after > now else 0
            key = (rises, after, state.running_batch + state.queue_len, state.kv_tokens_used)
            if best is None or key < best:
                best, best_state = key, state
        assert best is not None and best_state is not None
        clocks = self.predictor.clocks_mhz
        clock_index = min(best[1], len(clocks) - 1)
        return Placement(
            prefill.instance_id,
            best_state.instance_id,
            "decode clock stays" if best[0] == 0 else "every decode clock rises: lowest",
            decode_clock_mhz=int(clocks[clock_index]),
        )


def build_paper_suite(context: PolicyContext, router: RoutingPolicy | None) -> PolicySuite:
    predictor = fit_predictor(context.perf, paper_candidate_clocks_mhz(context.gpu))
    # Above this rate a typical 1k-token prompt keeps the lowest candidate clock >70% busy.
    typical_ms = float(predictor.prefill_latency_ms(1024)[0])
    threshold_rps = 0.7 * 1000.0 / typical_ms
    return PolicySuite(
        "voltana-paper",
        EcoFreqPrefill(predictor, arrival_rate_threshold_rps=threshold_rps),
        EcoFreqDecode(predictor),
        router or EcoRoute(predictor),
    )
