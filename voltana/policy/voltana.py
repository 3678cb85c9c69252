"""`voltana`: Voltana's own policy, built on what the published method leaves open.

Energy, correctly counted: a GPU that is up draws its parked idle power whatever the policy does,
so a clock is judged by the energy it adds above that floor, (P(f) - P_idle) x t(f), not by
P(f) x t(f) - which would pretend that finishing sooner saves the idle floor. With a voltage floor
below the knee that excess barely changes across the low clocks, so among clocks within a
tolerance of the cheapest the fastest is taken: the same energy, more latency headroom.

Frequency (per phase):
- the GPU's whole clock range (30 MHz grid), and among the clocks that meet the target the one
  adding the least energy, not simply the lowest;
- prefill plans for its whole backlog, requests placed on it but not yet reported included: the
  oldest waiting request must finish within the TTFT budget after the backlog drains at the
  chosen clock, and the clock must keep up with the prompt tokens arriving (counted at
  placement), so a queue no longer forces the maximum clock;
- decode plans for the batch it holds plus the requests already placed on it;
- measured latency is fed back: a per-instance correction factor (measured / predicted ITL) and a
  TTFT guard that tightens the budget when measured TTFT approaches the target and relaxes it
  slowly - the safety margin is earned rather than guessed;
- a lower clock is taken only after it has been chosen for `downshift_ticks` decisions in a row
  (hysteresis sized to the clock-change delay); raising is immediate;
- idle instances park: decode at the lowest clock (decode barely needs the SMs), prefill at the
  clock that still prefills a large prompt well within the TTFT budget (the controller also
  raises it the moment a request is placed on it).

Routing: prefill to the instance that would finish the prompt soonest; decode to the instance
where the request adds the least power given the clock each would then need. This consolidates
light load onto fewer busy decode GPUs while the others idle at their parking clock, and it
avoids batch-boundary crossings that would raise a clock (EcoRoute's insight, generalised).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

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
from voltana.policy.common import fit_predictor, full_range_clocks_mhz
from voltana.policy.predictor import LatencyPredictor
from voltana.policy.routing import NoInstanceError, prefill_load
from voltana.policy.unified import UnifiedLaw

# Prefill latency segments (tokens): attention makes long prompts cost more per token.
VOLTANA_TOKEN_BREAKPOINTS = (512.0, 2048.0, 8192.0)
# Clocks whose added energy is within this fraction of the cheapest count as equally cheap; the
# fastest of them is taken (latency headroom for free below the voltage knee).
ENERGY_TOLERANCE = 0.03
# The active decode set changes size only for a plan this much cheaper (no flapping).
PLAN_HYSTERESIS = 0.05
# A clock change made for energy alone must save at least this fraction of the energy the
# current clock adds; one that keeps a target is always made. A change is not free (an NVML
# lock call, a transition of tens of ms during which the GPU runs at neither clock), and two
# adjacent clocks' predicted energies differ by less than the predictor's own error, so
# chasing them only turns prediction noise into clock changes.
CHANGE_MIN_SAVING = 0.05


def cheapest_fastest(added_energy: np.ndarray, feasible: np.ndarray) -> int | None:
    """Index of the fastest feasible clock whose added energy is within the tolerance of the
    cheapest feasible one (None when no clock is feasible). Clocks ascend."""
    if not feasible.any():
        return None
    costs = np.where(feasible, added_energy, np.inf)
    cheapest = float(costs.min())
    near = feasible & (costs <= cheapest + ENERGY_TOLERANCE * abs(cheapest))
    return int(np.flatnonzero(near)[-1])


def cheapest_slowest(added_energy: np.ndarray, feasible: np.ndarray) -> int | None:
    """Index of the slowest feasible clock whose added energy is within the tolerance of the
    cheapest feasible one (None when none is feasible): where latency headroom is not free."""
    if not feasible.any():
        return None
    costs = np.where(feasible, added_energy, np.inf)
    cheapest = float(costs.min())
    near = feasible & (costs <= cheapest + ENERGY_TOLERANCE * abs(cheapest))
    return int(np.flatnonzero(near)[0])


def settled_index(
    added_energy: np.ndarray,
    feasible: np.ndarray,
    chosen: int | None,
    current_mhz: int | None,
    clocks_mhz: np.ndarray,
    min_saving: float = CHANGE_MIN_SAVING,
) -> int | None:
    """``chosen``, or the clock the instance is already at when that one still meets the
    target and adds at most ``min_saving`` more energy than the cheapest feasible clock."""
    if chosen is None or current_mhz is None:
        return chosen
    current = int(np.searchsorted(clocks_mhz, current_mhz))
    if current >= len(clocks_mhz) or clocks_mhz[current] != current_mhz or not feasible[current]:
        return chosen
    cheapest = float(np.where(feasible, added_energy, np.inf).min())
    if added_energy[current] <= cheapest + min_saving * abs(cheapest):
        return current
    return chosen


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
    # Parking: an idle instance waits at the lowest clock that still prefills a large prompt
    # (a high quantile of prompts seen, learned online) within `park_ttft_fraction` of the TTFT
    # target: a prompt may start before the raised clock takes effect.
    park_ttft_fraction: float = 0.5
    park_quantile: float = 0.8
    initial_large_prompt_tokens: int = 2048
    downshift_ticks: int = 3
    change_min_saving: float = CHANGE_MIN_SAVING
    # What one clock change costs (J): None = the GPU's transition, its clock-change delay at
    # the idle draw (the GPU does no useful work meanwhile); an operator may set a budget.
    change_cost_j: float | None = None
    clock_change_delay_ms: float = 20.0
    # Of clocks about as cheap, the fastest (latency headroom for free on a prefill GPU) or,
    # False, the slowest (on a colocated GPU a raised clock outlasts the prompt into the
    # decode steps after it, and every raise is a change).
    prefer_fastest: bool = True
    name: str = "voltana-prefill"
    is_static: bool = False
    _hysteresis: _Hysteresis = field(init=False)
    _guard: dict[str, float] = field(default_factory=dict, init=False)
    _prompt_tokens: deque[int] = field(default_factory=lambda: deque(maxlen=256), init=False)
    _last_running_tokens: dict[str, int] = field(default_factory=dict, init=False)
    # The parking clock is a pure function of the prompts seen and the SLO: kept until either
    # changes (an idle instance asks for it at every tick).
    _park: tuple[int, SloTarget, int] | None = field(default=None, init=False)
    _prompts_seen: int = field(default=0, init=False)

    def _observe_prompts(self, state: InstanceState) -> None:
        """Learn prompt sizes: a lone running prompt is one request's (first) chunk."""
        running = state.running_prefill_tokens
        if (
            running
            and state.queue_len == 0
            and running != self._last_running_tokens.get(state.instance_id)
        ):
            self._prompt_tokens.append(running)
            self._prompts_seen += 1
        self._last_running_tokens[state.instance_id] = running

    def park_clock_mhz(self, slo: SloTarget) -> int:
        park = self._park
        if park is not None and park[0] == self._prompts_seen and park[1] == slo:
            return park[2]
        clock_mhz = self._park_clock_mhz(slo)
        self._park = (self._prompts_seen, slo, clock_mhz)
        return clock_mhz

    def _park_clock_mhz(self, slo: SloTarget) -> int:
        if self._prompt_tokens:
            large = float(np.quantile(np.fromiter(self._prompt_tokens, float), self.park_quantile))
        else:
            large = float(self.initial_large_prompt_tokens)
        target_ms = slo.ttft_target_ms(large)
        feasible = self.predictor.prefill_latency_ms(large) <= self.park_ttft_fraction * target_ms
        clocks = self.predictor.clocks_mhz
        return int(clocks[int(np.argmax(feasible))]) if feasible.any() else int(clocks[-1])

    def __post_init__(self) -> None:
        self._hysteresis = _Hysteresis(self.downshift_ticks)

    def _idle_power_w(self, clock_mhz: int) -> float:
        clocks = self.predictor.clocks_mhz
        index = min(int(np.searchsorted(clocks, clock_mhz)), len(clocks) - 1)
        return float(self.predictor.idle_power[index])

    def _parking_pays(self, state: InstanceState, current_mhz: int, park_mhz: int) -> bool:
        """Parking until the next prompt saves the idle draw's difference over the expected gap
        (1 / the instance's arrival rate) and costs two clock changes (down now, up with the
        next prompt)."""
        if state.arrival_rate_rps <= 0:
            return True
        gap_s = 1.0 / state.arrival_rate_rps
        saving_j = (self._idle_power_w(current_mhz) - self._idle_power_w(park_mhz)) * gap_s
        cost_j = self.change_cost_j
        if cost_j is None:
            cost_j = self.clock_change_delay_ms / 1000.0 * self._idle_power_w(current_mhz)
        return saving_j > 2.0 * cost_j

    def _budget_scale(self, state: InstanceState, target_ms: float) -> float:
        """TTFT guard: tighten fast when measured TTFT nears the target, relax slowly."""
        scale = self._guard.get(state.instance_id, 1.0)
        measured = state.recent_ttft_ms
        if measured is not None:
            if measured > 0.6 * target_ms:
                scale = max(0.4, scale * 0.85)
            elif measured < 0.35 * target_ms:
                scale = min(1.0, scale * 1.02)
        self._guard[state.instance_id] = scale
        return scale

    def decide(self, state: InstanceState, slo: SloTarget, now_s: float) -> ClockDecision:
        predictor = self.predictor
        clocks = predictor.clocks_mhz
        self._observe_prompts(state)
        backlog = state.running_prefill_tokens + state.queued_tokens + state.inflight_tokens
        # The prompt a TTFT target applies to: the mean arriving one, else what is running.
        if state.arrival_rate_rps > 0:
            prompt_tokens = state.arrival_tokens_per_s / state.arrival_rate_rps
        else:
            prompt_tokens = float(state.running_prefill_tokens or backlog)
        target_ms = slo.ttft_target_ms(prompt_tokens)
        scale = self._budget_scale(state, target_ms)
        if backlog == 0:
            wanted = self.park_clock_mhz(slo)
            current = self._hysteresis.current.get(state.instance_id)
            if (
                current is not None
                and current > wanted
                and not self._parking_pays(state, current, wanted)
            ):
                return ClockDecision(
                    self._hysteresis.apply(state.instance_id, current),
                    "idle: hold (parking saves less than its two clock changes cost)",
                )
            return ClockDecision(self._hysteresis.apply(state.instance_id, wanted), "idle: park")
        # Drain time of the whole backlog (chunked at the iteration budget) at every clock.
        full_chunks, rest = divmod(backlog, self.chunk_tokens)
        drain_ms = full_chunks * predictor.prefill_latency_ms(self.chunk_tokens)
        if rest:
            drain_ms = drain_ms + predictor.prefill_latency_ms(rest)
        budget_ms = target_ms * (1.0 - self.margin) * scale - state.oldest_wait_ms
        feasible = drain_ms <= budget_ms
        # Energy added above the parked draw, per clock: for the stream of prompts arriving
        # (counted at placement) when there is one - a slower clock lets more of them share
        # an iteration - else for draining this backlog alone.
        if state.arrival_rate_rps > 0:
            stream = prefill_stream(predictor, state.arrival_rate_rps, max(1.0, prompt_tokens))
            # A prompt arriving now waits for the running iteration, then runs its own.
            feasible &= 2.0 * stream.iteration_ms <= budget_ms
            feasible &= stream.token_load <= self.max_utilisation
            added = stream.added_power_w
        else:
            excess_w = (
                predictor.prefill_power_w(min(backlog, self.chunk_tokens)) - predictor.idle_power[0]
            )
            added = excess_w * drain_ms
        index = settled_index(
            added,
            feasible,
            (cheapest_fastest if self.prefer_fastest else cheapest_slowest)(added, feasible),
            self._hysteresis.current.get(state.instance_id),
            clocks,
            self.change_min_saving,
        )
        if index is None:
            wanted = int(clocks[-1])
            return ClockDecision(self._hysteresis.apply(state.instance_id, wanted), "backlog: max")
        return ClockDecision(
            self._hysteresis.apply(state.instance_id, int(clocks[index])),
            "least added energy meeting TTFT",
        )


@dataclass(frozen=True)
class PrefillStream:
    """Steady state of a prefill instance fed ``rate`` prompts per second, per clock."""

    batch_requests: np.ndarray  # prompts per iteration
    iteration_ms: np.ndarray
    # Arriving tokens over the marginal token throughput: batching absorbs any busy fraction
    # up to 1, but at 1 the batch (and TTFT) grows without bound.
    token_load: np.ndarray
    added_power_w: np.ndarray  # mean draw above the parked idle power


def prefill_stream(
    predictor: LatencyPredictor, rate_rps: float, mean_prompt_tokens: float
) -> PrefillStream:
    """Batched service of a Poisson stream: an iteration takes every prompt that arrived during
    the previous one (one, later, when none did), so the mean batch b solves
    b = rate*L(b) + exp(-rate*L(b)); iterations run rate/b times a second."""
    batch = np.ones(len(predictor.clocks_mhz))
    for _ in range(6):  # the fixed point converges in a few steps (L is linear in tokens)
        iteration_ms = predictor.prefill_latency_ms_each(batch * mean_prompt_tokens)
        arrivals = rate_rps * iteration_ms / 1000.0
        batch = np.maximum(1.0, arrivals + np.exp(-arrivals))
    tokens = batch * mean_prompt_tokens
    iteration_ms = predictor.prefill_latency_ms_each(tokens)
    power_w = predictor.prefill_power_w_each(tokens) - predictor.idle_power[0]
    iterations_per_s = rate_rps / batch
    per_token_ms = predictor.prefill_latency_ms_each(tokens + 1.0) - iteration_ms
    return PrefillStream(
        batch,
        iteration_ms,
        rate_rps * mean_prompt_tokens * per_token_ms / 1000.0,
        iterations_per_s * power_w * iteration_ms / 1000.0,
    )


@dataclass
class VoltanaDecode:
    predictor: LatencyPredictor
    margin: float = 0.10
    downshift_ticks: int = 3
    change_min_saving: float = CHANGE_MIN_SAVING
    prefer_fastest: bool = True  # as VoltanaPrefill's
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
        if state.decode_backlog(slo.itl_ms):
            return ClockDecision(
                self._hysteresis.apply(state.instance_id, int(clocks[-1])), "admission queue: max"
            )
        # The batch it holds plus the requests already placed on it (they join within a prefill).
        batch = state.running_batch + state.inflight_requests
        kv_tokens = state.kv_tokens_used + state.inflight_tokens
        added, feasible = decode_clock_costs(
            predictor, batch, kv_tokens, slo.itl_ms, self.margin, factor
        )
        settled = settled_index(
            added,
            feasible,
            (cheapest_fastest if self.prefer_fastest else cheapest_slowest)(added, feasible),
            self._hysteresis.current.get(state.instance_id),
            clocks,
            self.change_min_saving,
        )
        index = len(clocks) if settled is None else settled
        wanted = int(clocks[min(index, len(clocks) - 1)])
        reason = "least added energy meeting ITL" if index < len(clocks) else "ITL at risk: max"
        return ClockDecision(self._hysteresis.apply(state.instance_id, wanted), reason)


def decode_added_power_w(predictor: LatencyPredictor, power_w: np.ndarray) -> np.ndarray:
    """Draw above the parked idle power (per clock; any column shape)."""
    return power_w - predictor.idle_power[0]


def decode_clock_costs(
    predictor: LatencyPredictor,
    batch: int,
    kv_tokens: float,
    itl_ms: float,
    margin: float,
    correction: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per clock: the energy per generated token above the parked draw, and whether the clock
    meets ITL. (Per token, not per second: a slower step grows the batch the same token demand
    settles at, so the draw it saves is partly spent again.)"""
    latency = predictor.decode_latency_ms(batch, kv_tokens) * correction
    feasible = latency * (1.0 + margin) <= itl_ms
    added = decode_added_power_w(predictor, predictor.decode_power_w(batch, kv_tokens)) * latency
    return added, feasible


def sharing(request: RequestSpec, serving: Mapping[str, SloTarget]) -> RequestSpec:
    """``request`` as it is placed on instances serving ``serving``: at the tightest ITL
    target served (a batch runs at the clock its tightest request needs)."""
    tight_itl_ms = min([request.slo.itl_ms, *(t.itl_ms for t in serving.values())])
    if tight_itl_ms == request.slo.itl_ms:
        return request
    return replace(request, slo=replace(request.slo, itl_ms=tight_itl_ms))


# Requests over which the router averages the share of loose-class requests.
LOOSE_SHARE_REQUESTS = 256


@dataclass
class VoltanaRouter:
    """Prefill: soonest finish. Decode: the load shared evenly by the number of instances that
    carries it with the least power (the others stay parked)."""

    predictor: LatencyPredictor
    margin: float = 0.10
    kv_headroom: float = 0.9
    # Plan the active decode set for this multiple of the current load: Poisson bursts must not
    # push a consolidated instance past its ITL target (or to its maximum clock).
    plan_headroom: float = 1.25
    name: str = "voltana"
    # Of the requests placed lately, the share looser than the tightest ITL target served
    # (an exponential average over about LOOSE_SHARE_REQUESTS requests; SLO classes only).
    _loose_share: float = field(default=0.0, init=False, repr=False)

    def _class_lane(
        self, request: RequestSpec, states: list[InstanceState], serving: Mapping[str, SloTarget]
    ) -> tuple[list[InstanceState], RequestSpec]:
        """The decode instances a request may join while requests of several SLO classes are
        served, and the request as it is placed there. One tight request holds a whole batch
        to the tight clock, so the loose requests may get instances of their own (the last
        ones) and run them slower - but only where that plan draws less than every class
        sharing (a woken instance's draw usually costs more than a lower clock saves, and an
        ITL target that does not bind saves nothing). Sharing, a loose request is placed as a
        tight one: the batch it joins runs at the tight clock."""
        tight_itl_ms = min([request.slo.itl_ms, *(t.itl_ms for t in serving.values())])
        loose_itl_ms = max([request.slo.itl_ms, *(t.itl_ms for t in serving.values())])
        loose = request.slo.itl_ms > tight_itl_ms
        self._loose_share += (float(loose) - self._loose_share) / LOOSE_SHARE_REQUESTS
        shared = (states, sharing(request, serving))
        if loose_itl_ms <= tight_itl_ms or len(states) < 2:
            return shared
        total_batch = sum(s.running_batch + s.queue_len + s.inflight_requests for s in states)
        total_kv = sum(s.kv_tokens_used + s.inflight_tokens for s in states)
        load = (total_batch + 1.0, total_kv + request.input_tokens + 1.0)
        shared_w = self._plan_cost_w(load, 1.0, len(states), tight_itl_ms)
        share = self._loose_share
        best_w, loose_count = shared_w * (1.0 - PLAN_HYSTERESIS), 0
        for count in range(1, len(states)):
            split_w = self._plan_cost_w(
                load, 1.0 - share, len(states) - count, tight_itl_ms
            ) + self._plan_cost_w(load, share, count, loose_itl_ms)
            if split_w < best_w:
                best_w, loose_count = split_w, count
        if not loose_count:
            return shared
        return (states[-loose_count:] if loose else states[:-loose_count]), request

    def _plan_cost_w(
        self, load: tuple[float, float], share: float, count: int, itl_ms: float
    ) -> float:
        """Draw above the parked idle power of the cheapest plan carrying ``share`` of the
        decode ``load`` (requests, KV tokens) on at most ``count`` instances at ``itl_ms``."""
        if share <= 0:
            return 0.0
        shares = np.arange(1, count + 1, dtype=float)
        batch, kv_tokens = (share * value * self.plan_headroom / shares for value in load)
        power, _ = self._best_power_w(batch, kv_tokens, itl_ms)
        return float(np.min(shares * (power - self.predictor.idle_power[0])))

    def _best_power_w(
        self, batches: np.ndarray, kv_tokens: np.ndarray, itl_ms: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per column: draw at the lowest clock meeting ITL (inf when none does), and that
        clock's index. A decode instance with requests steps continuously, so what a request
        costs it is the draw it adds. Every instance is evaluated in one array expression,
        which keeps a placement well under a millisecond at 64 instances."""
        predictor = self.predictor
        latency = predictor.decode_latency_ms_many(batches, kv_tokens)
        power = predictor.decode_power_w_many(batches, kv_tokens)
        feasible = latency * (1.0 + self.margin) <= itl_ms
        index = np.argmax(feasible, axis=0)  # clocks ascend: the first feasible one
        columns = np.arange(len(batches))
        best = np.where(feasible[index, columns], power[index, columns], np.inf)
        idle = batches <= 0  # an empty instance draws its parked idle power
        best = np.where(idle, predictor.idle_power[0], best)
        return best, np.where(idle, 0, index)

    def place(self, request: RequestSpec, snapshot: ClusterSnapshot) -> Placement:
        if not snapshot.prefill or not snapshot.decode:
            raise NoInstanceError("no prefill or no decode instance available")
        prefill = min(snapshot.prefill.values(), key=prefill_load)
        states = list(snapshot.decode.values())
        lane, placed = states, request
        if snapshot.serving:
            lane, placed = self._class_lane(request, states, snapshot.serving)
        choice = self._choose_decode(placed, lane) if 0 < len(lane) < len(states) else None
        if choice is None:  # (a lane of its own is full: the request joins a tight batch)
            if lane is not states:
                placed = sharing(request, snapshot.serving)
            choice = self._choose_decode(placed, states)
        if choice is None:  # no room at any clock: last resort, least loaded
            chosen = min(
                states,
                key=lambda s: (
                    s.running_batch + s.queue_len + s.inflight_requests,
                    s.kv_tokens_used + s.inflight_tokens,
                ),
            )
            choice = (
                chosen,
                len(self.predictor.clocks_mhz) - 1,
                "no decode has room at target: least loaded",
            )
        decode, clock_index, reason = choice
        return Placement(
            prefill.instance_id,
            decode.instance_id,
            reason,
            decode_clock_mhz=int(self.predictor.clocks_mhz[clock_index]),
        )

    def _choose_decode(
        self, request: RequestSpec, states: list[InstanceState]
    ) -> tuple[InstanceState, int, str] | None:
        """The decode instance among ``states`` for ``request``, the clock index it would run
        at, and why; None when none has room at any clock."""
        added_kv = request.input_tokens + 1
        reserve = request.input_tokens + request.max_output_tokens + 1
        # The state trajectory: what each instance will hold once the requests placed on it
        # arrive (the ledger's in-flight counts); waiting requests join at the next step.
        batches = np.array(
            [s.running_batch + s.queue_len + s.inflight_requests for s in states], dtype=float
        )
        kv_tokens = np.array([s.kv_tokens_used + s.inflight_tokens for s in states], dtype=float)
        limits = np.array([s.max_running_requests or 1 << 30 for s in states], dtype=float)
        capacity = np.array([s.kv_tokens_capacity or 1 << 62 for s in states], dtype=float)
        # A request waiting this long for admission means the engine is full by its own count
        # (it reserves KV for whole outputs, more than the tokens in use): nothing more there.
        admission_blocked = np.array(
            [s.queue_len > 0 and s.oldest_wait_ms > 2.0 * request.slo.itl_ms for s in states]
        )
        fits = (
            (batches < limits)
            & (kv_tokens + reserve <= self.kv_headroom * capacity)
            & ~admission_blocked
        )
        power, index = self._best_power_w(
            np.concatenate([batches, batches + 1]),
            np.concatenate([kv_tokens, kv_tokens + added_kv]),
            request.slo.itl_ms,
        )
        count = len(states)
        before, after, after_index = power[:count], power[count:], index[count:]
        valid = fits & np.isfinite(before) & np.isfinite(after)
        active = self._active_set(batches, kv_tokens, added_kv, request.slo.itl_ms)
        added_w = np.full(count, np.inf)
        added_w[valid] = after[valid] - before[valid]
        planned = active & np.isfinite(added_w)
        if planned.any():
            # The plan shares the load evenly: the least loaded active instance takes it.
            order = np.lexsort((kv_tokens, batches, ~planned))
            chosen = int(order[0])
            reason = f"even share of {int(active.sum())} active decode instances"
        elif np.isfinite(added_w).any():  # the active ones are full: spill
            order = np.lexsort((-batches, added_w))
            chosen = int(order[0])
            reason = "active decode instances full: least added power"
        else:
            return None
        return states[chosen], int(after_index[chosen]), reason

    def _active_set(
        self, batches: np.ndarray, kv_tokens: np.ndarray, added_kv: int, itl_ms: float
    ) -> np.ndarray:
        """How many decode instances should carry the load, and which: the busiest ones.

        Adding each request where it adds the least power is myopic: a busy instance's next
        clock step always costs less than waking a parked one, so one instance would climb to
        the maximum clock while a second could carry half at a low one. So the whole decode
        load (with this request) is planned at once: k instances sharing it evenly draw
        k x (P(load/k) - idle) at their lowest clocks meeting ITL; the cheapest k wins, and
        the current number of busy instances is kept unless another is 5% cheaper (no
        flapping)."""
        count = len(batches)
        total_batch = (float(batches.sum()) + 1.0) * self.plan_headroom
        total_kv = (float(kv_tokens.sum()) + added_kv) * self.plan_headroom
        shares = np.arange(1, count + 1, dtype=float)
        power, _ = self._best_power_w(total_batch / shares, total_kv / shares, itl_ms)
        cost = shares * (power - self.predictor.idle_power[0])
        busy = int((batches > 0).sum())
        best = int(np.argmin(cost))
        if (
            busy
            and np.isfinite(cost[busy - 1])
            and cost[best] > (1 - PLAN_HYSTERESIS) * cost[busy - 1]
        ):
            best = busy - 1
        chosen = np.zeros(count, dtype=bool)
        # The busiest instances stay active (stable order: batch, then position).
        chosen[np.lexsort((np.arange(count), -batches))[: best + 1]] = True
        return chosen


def build_voltana_suite(
    context: PolicyContext,
    router: RoutingPolicy | None,
    *,
    clocks_mhz: tuple[int, ...] | None = None,
    name: str = "voltana",
) -> PolicySuite:
    """Voltana's policy; ``clocks_mhz`` replaces the full clock range (an ablation)."""
    clocks = clocks_mhz or full_range_clocks_mhz(context.gpu, context.clock_range_mhz)
    predictor = fit_predictor(
        context.perf, clocks, VOLTANA_TOKEN_BREAKPOINTS, max_batch=context.max_running_requests
    )
    delay_ms = context.gpu.clock_change_delay_ms
    return PolicySuite(
        name,
        VoltanaPrefill(predictor, clock_change_delay_ms=delay_ms),
        VoltanaDecode(predictor),
        router or VoltanaRouter(predictor),
        # Colocated instances: the same laws, taking the slowest of equally cheap clocks.
        unified=UnifiedLaw(
            VoltanaPrefill(predictor, clock_change_delay_ms=delay_ms, prefer_fastest=False),
            VoltanaDecode(predictor, prefer_fastest=False),
            context.perf,
            name=f"{name}-unified",
        ),
    )
