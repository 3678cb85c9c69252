"""`voltana`: Voltana's own policy, built on what the published method leaves open.

Frequency (per phase):
- the GPU's whole clock range (30 MHz grid), and among the clocks that meet the target the one that
  costs least energy (the U-curve), not simply the lowest;
- prefill plans for its whole backlog: the oldest waiting request must finish within the TTFT
  budget after the queue drains at the chosen clock, and the clock must keep up with the recent
  arrival rate (look-ahead), so a queue no longer forces the maximum clock;
- measured latency is fed back: a per-instance correction factor (measured / predicted ITL) and a
  TTFT guard that tightens the budget when measured TTFT approaches the target and relaxes it
  slowly — the safety margin is earned rather than guessed;
- a lower clock is taken only after it has been chosen for `downshift_ticks` control ticks in a
  row (hysteresis sized to the clock-change delay); raising is immediate;
- idle instances park: decode at the lowest clock (decode barely needs the SMs), prefill at the
  clock that still prefills a typical prompt well within the TTFT budget on wake-up.

Routing: prefill to the instance that would finish the prompt soonest; decode to the instance where
the request adds the least power given the clock each would then need (marginal energy). This
consolidates light load onto fewer busy decode GPUs while the others idle at their parking clock,
and it avoids batch-boundary crossings that would raise a clock (EcoRoute's insight, generalised).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from voltana.policy.base import PolicyContext, PolicySuite, RoutingPolicy
from voltana.policy.common import fit_predictor, full_range_clocks_mhz
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


@dataclass
class _Hysteresis:
    """Raise at once; lower only after the same lower clock was wanted `ticks` times in a row."""

    ticks: int
    current: dict[str, int] = field(default_factory=dict)
    pending: dict[str, tuple[int, int]] = field(default_factory=dict)

    def apply(self, instance_id: str, wanted_mhz: int) -> int:
        current = self.current.get(instance_id)
        if current is None or wanted_mhz >= current or self.ticks <= 1:
            self.current[instance_id] = wanted_mhz
            self.pending.pop(instance_id, None)
            return wanted_mhz
        lower, count = self.pending.get(instance_id, (wanted_mhz, 0))
        count = count + 1 if lower == wanted_mhz else 1
        if count >= self.ticks:
            self.current[instance_id] = wanted_mhz
            self.pending.pop(instance_id, None)
            return wanted_mhz
        self.pending[instance_id] = (wanted_mhz, count)
        return current


@dataclass
class VoltanaPrefill:
    predictor: LatencyPredictor
    chunk_tokens: int = 8192
    margin: float = 0.10
    max_utilisation: float = 0.75
    typical_prompt_tokens: float = 1024.0
    # Parking: an idle instance waits at the lowest clock that still prefills a large prompt
    # (the p95 of prompts seen, learned online) within `park_ttft_fraction` of the TTFT target,
    # because the first prompt after idling starts before the controller can raise the clock.
    park_ttft_fraction: float = 0.5
    park_quantile: float = 0.8
    initial_large_prompt_tokens: int = 2048
    downshift_ticks: int = 3
    name: str = "voltana-prefill"
    is_static: bool = False
    _hysteresis: _Hysteresis = field(init=False)
    _guard: dict[str, float] = field(default_factory=dict, init=False)
    _prompt_tokens: deque[int] = field(default_factory=lambda: deque(maxlen=256), init=False)
    _last_running_tokens: dict[str, int] = field(default_factory=dict, init=False)

    def _observe_prompts(self, state: InstanceState) -> None:
        """Learn prompt sizes: a lone running prompt is one request's (first) chunk."""
        running = state.running_prefill_tokens
        if (
            running
            and state.queue_len == 0
            and running != self._last_running_tokens.get(state.instance_id)
        ):
            self._prompt_tokens.append(running)
        self._last_running_tokens[state.instance_id] = running

    def park_clock_mhz(self, slo: SloTarget) -> int:
        if self._prompt_tokens:
            large = float(np.quantile(np.fromiter(self._prompt_tokens, float), self.park_quantile))
        else:
            large = float(self.initial_large_prompt_tokens)
        feasible = self.predictor.prefill_latency_ms(large) <= self.park_ttft_fraction * slo.ttft_ms
        clocks = self.predictor.clocks_mhz
        return int(clocks[int(np.argmax(feasible))]) if feasible.any() else int(clocks[-1])

    def __post_init__(self) -> None:
        self._hysteresis = _Hysteresis(self.downshift_ticks)

    def _budget_scale(self, state: InstanceState, slo: SloTarget) -> float:
        """TTFT guard: tighten fast when measured TTFT nears the target, relax slowly."""
        scale = self._guard.get(state.instance_id, 1.0)
        measured = state.recent_ttft_ms
        if measured is not None:
            if measured > 0.6 * slo.ttft_ms:
                scale = max(0.4, scale * 0.85)
            elif measured < 0.35 * slo.ttft_ms:
                scale = min(1.0, scale * 1.02)
        self._guard[state.instance_id] = scale
        return scale

    def decide(self, state: InstanceState, slo: SloTarget, now_s: float) -> ClockDecision:
        predictor = self.predictor
        clocks = predictor.clocks_mhz
        scale = self._budget_scale(state, slo)
        self._observe_prompts(state)
        backlog = state.running_prefill_tokens + state.queued_tokens
        if backlog == 0:
            wanted = self.park_clock_mhz(slo)
            return ClockDecision(self._hysteresis.apply(state.instance_id, wanted), "idle: park")
        if state.queue_len:
            self.typical_prompt_tokens += 0.1 * (
                state.queued_tokens / state.queue_len - self.typical_prompt_tokens
            )
        # Drain time of the whole backlog (chunked at the iteration budget) at every clock.
        full_chunks, rest = divmod(backlog, self.chunk_tokens)
        drain_ms = full_chunks * predictor.prefill_latency_ms(self.chunk_tokens)
        if rest:
            drain_ms = drain_ms + predictor.prefill_latency_ms(rest)
        budget_ms = slo.ttft_ms * (1.0 - self.margin) * scale - state.oldest_wait_ms
        feasible = drain_ms <= budget_ms
        # Look-ahead: the clock must keep up with the recent arrival stream.
        typical_ms = predictor.prefill_latency_ms(self.typical_prompt_tokens)
        feasible &= state.arrival_rate_rps * typical_ms / 1000.0 <= self.max_utilisation
        if not feasible.any():
            wanted = int(clocks[-1])
            return ClockDecision(self._hysteresis.apply(state.instance_id, wanted), "backlog: max")
        # Energy above the parked draw for this backlog, per clock (the U-curve).
        excess_w = (
            predictor.prefill_power_w(min(backlog, self.chunk_tokens)) - predictor.idle_power[0]
        )
        energy = np.where(feasible, excess_w * drain_ms, np.inf)
        wanted = int(clocks[int(np.argmin(energy))])
        return ClockDecision(
            self._hysteresis.apply(state.instance_id, wanted), "energy-optimal clock meeting TTFT"
        )


@dataclass
class VoltanaDecode:
    predictor: LatencyPredictor
    margin: float = 0.10
    downshift_ticks: int = 3
    name: str = "voltana-decode"
    is_static: bool = False
    _hysteresis: _Hysteresis = field(init=False)
    _correction: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._hysteresis = _Hysteresis(self.downshift_ticks)

    def correction(self, state: InstanceState) -> float:
        """EWMA of measured / predicted ITL at the clock the instance actually ran."""
        factor = self._correction.get(state.instance_id, 1.0)
        if state.recent_itl_ms is not None and state.running_batch > 0:
            predicted = self.predictor.at_clock(
                self.predictor.decode_latency_ms(state.running_batch, state.kv_tokens_used),
                state.sm_clock_mhz,
            )
            if predicted > 0:
                ratio = min(2.0, max(0.7, state.recent_itl_ms / predicted))
                factor += 0.2 * (ratio - factor)
        self._correction[state.instance_id] = factor
        return factor

    def decide(self, state: InstanceState, slo: SloTarget, now_s: float) -> ClockDecision:
        predictor = self.predictor
        clocks = predictor.clocks_mhz
        factor = self.correction(state)
        if state.is_idle:
            return ClockDecision(
                self._hysteresis.apply(state.instance_id, int(clocks[0])), "idle: park"
            )
        if state.queue_len > 0:
            return ClockDecision(
                self._hysteresis.apply(state.instance_id, int(clocks[-1])), "admission queue: max"
            )
        index = best_decode_clock_index(
            predictor, state.running_batch, state.kv_tokens_used, slo.itl_ms, self.margin, factor
        )
        wanted = int(clocks[min(index, len(clocks) - 1)])
        reason = "energy-optimal clock meeting ITL" if index < len(clocks) else "ITL at risk: max"
        return ClockDecision(self._hysteresis.apply(state.instance_id, wanted), reason)


def best_decode_clock_index(
    predictor: LatencyPredictor,
    batch: int,
    kv_tokens: float,
    itl_ms: float,
    margin: float,
    correction: float = 1.0,
) -> int:
    """Clock index with the least energy per token meeting ITL; len(clocks) when none does."""
    latency = predictor.decode_latency_ms(batch, kv_tokens) * correction
    feasible = latency * (1.0 + margin) <= itl_ms
    if not feasible.any():
        return len(predictor.clocks_mhz)
    energy = np.where(feasible, predictor.decode_power_w(batch, kv_tokens) * latency, np.inf)
    return int(np.argmin(energy))


@dataclass
class VoltanaRouter:
    """Prefill: soonest finish. Decode: least added power at the clock it would then need."""

    predictor: LatencyPredictor
    margin: float = 0.10
    kv_headroom: float = 0.9
    # Expected delay from placement until the request joins its decode batch (prefill + KV).
    inbound_horizon_s: float = 1.0
    name: str = "voltana"
    # Requests placed but not yet visible in the decode instance's state: (expires at, KV tokens).
    _inbound: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)

    def _inbound_load(self, instance_id: str, now_s: float) -> tuple[int, int]:
        pending = self._inbound.get(instance_id)
        if not pending:
            return 0, 0
        while pending and pending[0][0] <= now_s:
            pending.popleft()
        return len(pending), sum(tokens for _, tokens in pending)

    def _best_power_w(
        self, batches: np.ndarray, kv_tokens: np.ndarray, itl_ms: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per column: draw at the energy-optimal clock meeting ITL (inf when none does), and
        that clock's index. Every instance is evaluated in one array expression, which keeps a
        placement well under a millisecond at 64 instances."""
        predictor = self.predictor
        latency = predictor.decode_latency_ms_many(batches, kv_tokens)
        power = predictor.decode_power_w_many(batches, kv_tokens)
        feasible = latency * (1.0 + self.margin) <= itl_ms
        index = np.argmin(np.where(feasible, power * latency, np.inf), axis=0)
        columns = np.arange(len(batches))
        best = np.where(feasible[index, columns], power[index, columns], np.inf)
        idle = batches <= 0  # an empty instance draws its parked idle power
        best = np.where(idle, predictor.idle_power[0], best)
        return best, np.where(idle, 0, index)

    def place(self, request: RequestSpec, snapshot: ClusterSnapshot) -> Placement:
        if not snapshot.prefill or not snapshot.decode:
            raise NoInstanceError("no prefill or no decode instance available")
        prefill = min(snapshot.prefill.values(), key=prefill_load)
        added_kv = request.input_tokens + 1
        reserve = request.input_tokens + request.max_output_tokens + 1
        now_s = snapshot.now_s
        states = list(snapshot.decode.values())
        batches = np.empty(len(states))
        kv_tokens = np.empty(len(states))
        fits = np.empty(len(states), dtype=bool)
        for n, state in enumerate(states):
            # The state trajectory: what the instance will hold once placed requests arrive.
            # Waiting requests join at the next step unless memory is short (checked here).
            inbound, inbound_kv = self._inbound_load(state.instance_id, now_s)
            batches[n] = state.running_batch + state.queue_len + inbound
            kv_tokens[n] = state.kv_tokens_used + inbound_kv
            fits[n] = batches[n] < (state.max_running_requests or 1 << 30) and kv_tokens[
                n
            ] + reserve <= self.kv_headroom * (state.kv_tokens_capacity or 1 << 62)
        power, index = self._best_power_w(
            np.concatenate([batches, batches + 1]),
            np.concatenate([kv_tokens, kv_tokens + added_kv]),
            request.slo.itl_ms,
        )
        count = len(states)
        before, after, after_index = power[:count], power[count:], index[count:]
        valid = fits & np.isfinite(before) & np.isfinite(after)
        added_w = np.full(count, np.inf)
        added_w[valid] = after[valid] - before[valid]
        if np.isfinite(added_w).any():
            # Least added power; ties go to the busier instance (keeps the others parked).
            order = np.lexsort((-batches, added_w))
            chosen = int(order[0])
            clock_index = int(after_index[chosen])
            reason = "least added decode power"
        else:  # no room at any clock: last resort, least loaded
            chosen = min(range(count), key=lambda n: (batches[n], kv_tokens[n]))
            clock_index = len(self.predictor.clocks_mhz) - 1
            reason = "no decode has room at target: least loaded"
        decode = states[chosen]
        self._inbound.setdefault(decode.instance_id, deque()).append(
            (now_s + self.inbound_horizon_s, added_kv)
        )
        return Placement(
            prefill.instance_id,
            decode.instance_id,
            reason,
            decode_clock_mhz=int(self.predictor.clocks_mhz[clock_index]),
        )


def build_voltana_suite(context: PolicyContext, router: RoutingPolicy | None) -> PolicySuite:
    clocks = full_range_clocks_mhz(context.gpu)
    predictor = fit_predictor(context.perf, clocks, token_breakpoints=(512, 2048, 8192))
    return PolicySuite(
        "voltana",
        VoltanaPrefill(predictor),
        VoltanaDecode(predictor),
        router or VoltanaRouter(predictor),
    )
