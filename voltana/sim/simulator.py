"""Deterministic discrete-event simulation of a PD-disaggregated cluster in virtual time.

Arrivals are placed by the routing policy; prefill instances run chunked FCFS prefill, ship KV to
their decode partner, and decode instances run continuous batching. Energy integrates every GPU's
power, idle time included, from the first arrival to the last completion.

The control loop is the live one (cluster.LoopTiming), driven through the same control core
(voltana.control) as the live router and controller: engines report their load through the
observation contract on an interval, telemetry hands the reports to the router and the
controller on their watch intervals, the router lays its placement book over them, the
controller ticks on its interval (and, with the placement trigger, decides at once for the
instances a request was just placed on, whose notice then stands for the placement hold), every
hop costs an RPC, and a new clock takes the GPU's clock-change delay. `LoopTiming.ideal()`
gives every decision the exact current state instead.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from voltana.batching.scheduling import DecodeJob, PrefillJob
from voltana.contract.state import ClusterSnapshot, InstanceState, Phase, RequestSpec, SloTarget
from voltana.control import NoticeBoard, PlacementBook, ServedTargets, needs_clock_command
from voltana.energy import RequestEnergy, WorkShares, spread_unclaimed
from voltana.errors import ConfigError
from voltana.perf.engine_costs import EngineCosts, engine_costs
from voltana.perf.model import IterationEstimate, PerformanceModel, calibrated_clock_range_mhz
from voltana.policy.base import FrequencyPolicy, PlanInput, PolicySuite, RoutingPolicy
from voltana.policy.unified import ColocatedRouting, UnifiedLaw
from voltana.report import RunOutcome
from voltana.sim.cluster import ClusterConfig
from voltana.sim.elastic import ElasticRecord, choose_to_drain, elastic_figures
from voltana.sim.instance import (
    DRAINING,
    SERVING,
    STARTING,
    STOPPED,
    InstanceSeries,
    SimInstance,
)
from voltana.workloads.classes import class_name
from voltana.workloads.request import TraceRequest

# Event kinds, ordered so simultaneous events resolve deterministically.
(
    _ARRIVAL,
    _DISPATCH,
    _PREFILL_DONE,
    _KV_ARRIVED,
    _DECODE_DONE,
    _REPORT,
    _ROUTER_WATCH,
    _CONTROLLER_WATCH,
    _NOTIFY,
    _CONTROL,
    _SAMPLE,
    _CLOCK,
) = range(12)
# Elasticity (after the others, so that runs without a planner order their events as before):
# the planner's tick, and an engine's start completing.
_PLAN, _STARTED = 12, 13
# Events that recur while requests are pending but are not work themselves.
_PERIODIC = frozenset({_REPORT, _ROUTER_WATCH, _CONTROLLER_WATCH, _CONTROL, _SAMPLE, _PLAN})
_heappush = heapq.heappush  # (bound once: the loop pushes an event or two per iteration)

REJECT_PROMPT_TOO_LONG = "prompt_too_long"
REJECT_KV_CAPACITY = "exceeds_kv_capacity"


@dataclass(slots=True)
class RequestRecord:
    request: TraceRequest
    prefill_index: int = -1
    decode_index: int = -1
    prefill_done_s: float = -1.0
    first_token_s: float = -1.0
    finish_s: float = -1.0
    rejected: str | None = None

    @property
    def completed(self) -> bool:
        return self.finish_s >= 0.0


__all__ = ["InstanceSeries", "RequestRecord", "Simulation", "SimulationResult"]


@dataclass
class SimulationResult:
    policy: str
    config: ClusterConfig
    records: list[RequestRecord]
    instance_ids: list[str]
    energy_j_by_instance: list[float]
    series: list[InstanceSeries]
    start_s: float
    end_s: float
    clock_changes: int
    decode_iteration_latency_s: list[float]
    decode_iteration_batch: list[int]
    # Per request (by index in ``records``): its share of the measured energy (voltana.energy).
    request_energy: list[RequestEnergy] = field(default_factory=list)
    # Per instance: seconds and energy at each clock (MHz), and the clocks the model that
    # produced these figures is calibrated over (energy outside them is extrapolated).
    clock_residency_s: list[dict[int, float]] = field(default_factory=list)
    energy_j_by_clock: list[dict[int, float]] = field(default_factory=list)
    calibrated_clock_range_mhz: tuple[int, int] | None = None
    # Elasticity (None: no planner, every instance served throughout).
    elastic: ElasticRecord | None = None

    @property
    def energy_j(self) -> float:
        return sum(self.energy_j_by_instance)

    def outcome(self) -> RunOutcome:
        ttft_ms: list[float] = []
        itl_ms: list[float] = []
        input_tokens: list[int] = []
        output_tokens = 0
        rejected: dict[str, int] = {}
        classed = any(record.request.slo is not None for record in self.records)
        targets: list[SloTarget | None] = []
        classes: list[str] = []
        for record in self.records:
            if record.rejected is not None:
                rejected[record.rejected] = rejected.get(record.rejected, 0) + 1
                continue
            request = record.request
            if classed:
                targets.append(request.slo)
                classes.append(class_name(request))
            ttft_ms.append((record.first_token_s - request.arrival_s) * 1e3)
            input_tokens.append(request.input_tokens)
            gaps = request.output_tokens - 1
            itl_ms.append((record.finish_s - record.first_token_s) * 1e3 / gaps if gaps else 0.0)
            output_tokens += request.output_tokens
        return RunOutcome(
            policy=self.policy,
            requests=len(self.records),
            ttft_ms=ttft_ms,
            mean_itl_ms=itl_ms,
            output_tokens=output_tokens,
            energy_j=self.energy_j,
            duration_s=self.end_s - self.start_s,
            num_gpus=self.config.num_gpus,
            rejected=rejected,
            input_tokens=input_tokens,
            token_itl_ms=[v * 1e3 for v in self.decode_iteration_latency_s],
            token_itl_weights=self.decode_iteration_batch,
            slo_targets=targets,
            slo_classes=classes,
            requests_by_class=(
                dict(Counter(class_name(record.request) for record in self.records))
                if classed
                else {}
            ),
            request_energy_j=(
                [
                    (energy.active_j, energy.idle_j)
                    for record, energy in zip(self.records, self.request_energy, strict=True)
                    if record.completed
                ]
                if self.request_energy
                else None
            ),
            extra={
                "clock_changes": self.clock_changes,
                **clock_figures(self),
                **(elastic_figures(self.elastic) if self.elastic is not None else {}),
            },
        )


def clock_figures(result: SimulationResult) -> dict[str, Any]:
    """How the run used its clocks: changes per GPU per minute, seconds per clock per phase
    (summed over the phase's instances), and the share of energy spent at clocks outside the
    model's calibrated range."""
    gpus = result.config.gpus_per_instance
    minutes = (result.end_s - result.start_s) / 60.0
    per_gpu_per_min = (
        result.clock_changes * gpus / result.config.num_gpus / minutes if minutes > 0 else 0.0
    )
    residency: dict[str, dict[str, float]] = {"prefill": {}, "decode": {}}
    extrapolated_j = 0.0
    low_mhz, high_mhz = result.calibrated_clock_range_mhz or (0, 1 << 30)
    for instance_id, seconds, energy in zip(
        result.instance_ids, result.clock_residency_s, result.energy_j_by_clock, strict=True
    ):
        phase = residency.setdefault(instance_id.rsplit("-", 1)[0], {})
        for clock_mhz, time_s in seconds.items():
            phase[str(clock_mhz)] = phase.get(str(clock_mhz), 0.0) + time_s
        extrapolated_j += sum(j for c, j in energy.items() if not low_mhz <= c <= high_mhz)
    for phase_name, phase in residency.items():
        residency[phase_name] = dict(sorted(phase.items(), key=lambda item: int(item[0])))
    total_j = result.energy_j
    return {
        "clock_changes_per_gpu_per_min": per_gpu_per_min,
        "clock_residency_s": residency,
        "extrapolated_energy_share": extrapolated_j / total_j if total_j > 0 else 0.0,
        "calibrated_clock_range_mhz": list(result.calibrated_clock_range_mhz or ()),
    }


ProgressCallback = Callable[[float], None]


class Simulation:
    """One run of one policy suite over one workload. Build a new one per run."""

    def __init__(
        self,
        config: ClusterConfig,
        perf: PerformanceModel,
        suite: PolicySuite,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.perf = perf
        self.suite = suite
        self._rng = random.Random(seed)
        self._gauss = self._rng.gauss
        self._jitter = config.latency_jitter
        loop = config.loop
        self._ideal = loop.is_ideal
        self._rpc_s = loop.rpc_ms / 1e3
        self._clock_delay_s = config.clock_delay_ms / 1e3
        self.instances: list[SimInstance] = []
        for n in range(config.num_prefill):
            self.instances.append(SimInstance(n, f"prefill-{n}", Phase.PREFILL, perf, config))
        for n in range(config.num_decode):
            index = config.num_prefill + n
            self.instances.append(SimInstance(index, f"decode-{n}", Phase.DECODE, perf, config))
        pd_count = config.num_prefill + config.num_decode
        for n in range(config.num_unified):
            self.instances.append(
                SimInstance(pd_count + n, f"unified-{n}", Phase.UNIFIED, perf, config)
            )
        self._prefill = self.instances[: config.num_prefill]
        self._decode = self.instances[config.num_prefill : pd_count]
        self._unified = self.instances[pd_count:]
        self._router: RoutingPolicy = (
            ColocatedRouting(suite.router) if config.num_unified else suite.router
        )
        # A suite built by hand (not by the registry) has no colocated law: compose its laws
        # with the physics simulated.
        self._unified_law: FrequencyPolicy = suite.unified or UnifiedLaw(
            suite.prefill, suite.decode, perf, chunk_tokens=config.chunked_prefill_tokens
        )
        self._by_id = {inst.instance_id: inst for inst in self.instances}
        self._events: list[tuple[float, int, int, int]] = []
        self._seq = 0
        self._records: list[RequestRecord] = []
        self._decode_latency_s: list[float] = []
        self._decode_batch: list[int] = []
        self._max_context = perf.model.max_context_tokens
        self._kv_capacity = perf.kv_capacity_tokens()
        # The router's side: placements counted per instance, and the in-flight ledger.
        window_s = config.observation.window_s
        self._placements = PlacementBook(window_s)
        # Telemetry's latest report per instance, and what the router and controller last got.
        self._reports: list[InstanceState | None] = [None] * len(self.instances)
        self._router_view: list[InstanceState | None] = [None] * len(self.instances)
        self._controller_view: list[InstanceState | None] = [None] * len(self.instances)
        # States the router sent the controller with a placement (the live controller's rule).
        self._notices = NoticeBoard(config.loop.placement_hold_ms / 1000.0)
        self._pending_notices: dict[int, tuple[InstanceState, ...]] = {}
        # When each watch next reads the reports (inf: never), and whether the controller's
        # copy matters (a static suite never decides after t0).
        self._next_router_watch_s = float("inf")
        self._next_controller_watch_s = float("inf")
        self._controller_reads = not suite.is_static
        # The SLO targets each instance serves, kept only for a workload with SLO classes
        # (without, every law runs against the cluster SLO).
        self._served = ServedTargets()
        self._classed = False
        # Elasticity: the suite's planner, the costs of stopping and starting engines, what a
        # stopped GPU is counted at, and the in-service counts over time.
        self._planner = suite.planner
        self._costs: EngineCosts = engine_costs(perf, config.engine_start_s)
        self._stopped_w = (
            self._costs.no_engine_w if config.released_gpu_w is None else config.released_gpu_w
        )
        self._pools = {
            Phase.PREFILL: self._prefill,
            Phase.DECODE: self._decode,
            Phase.UNIFIED: self._unified,
        }
        self._count_series: list[tuple[float, int, int, int, int]] = []

    # ---- event plumbing -------------------------------------------------------------------
    def _push(self, time_s: float, kind: int, payload: int) -> int:
        seq = self._seq = self._seq + 1
        _heappush(self._events, (time_s, kind, seq, payload))
        return seq

    def _jitter_factor(self) -> float:
        """This iteration's latency noise: a factor on the model's latency."""
        if self._jitter <= 0:
            return 1.0
        return max(0.5, 1.0 + self._gauss(0.0, self._jitter))

    # ---- what decisions see ---------------------------------------------------------------
    def _report(self, inst: SimInstance, now_s: float) -> InstanceState:
        """The instance's report now, with telemetry's placement counts added."""
        inst.advance(now_s)
        rates = self._placements.arrival_rates(inst.instance_id, now_s)
        return inst.observe(now_s, *rates) if rates is not None else inst.observe(now_s)

    def _router_state(self, inst: SimInstance, now_s: float) -> InstanceState | None:
        """The router's view: its last snapshot (exact in the ideal loop) plus its ledger and
        its own, current placement counts."""
        if self._ideal:
            base: InstanceState | None = self._report(inst, now_s)
        else:
            base = self._router_view[inst.index]
        if base is None:
            return None
        return self._placements.annotate(base, now_s)

    def snapshot(self, now_s: float) -> ClusterSnapshot:
        """What the router places on (instances it has not heard of yet are left out)."""
        prefill = {}
        for inst in self._prefill:
            if inst.state is not SERVING:  # draining, stopped or starting: not placed on
                continue
            state = self._router_state(inst, now_s)
            if state is not None:
                prefill[inst.instance_id] = state
        decode = {}
        for inst in self._decode:
            if inst.state is not SERVING:
                continue
            state = self._router_state(inst, now_s)
            if state is not None:
                decode[inst.instance_id] = state
        unified = {}
        for inst in self._unified:
            if inst.state is not SERVING:
                continue
            state = self._router_state(inst, now_s)
            if state is not None:
                unified[inst.instance_id] = state
        serving = self._served.serving(self.config.slo) if self._classed else {}
        if serving or unified:
            return ClusterSnapshot(now_s, prefill, decode, serving=serving, unified=unified)
        return ClusterSnapshot(now_s, prefill, decode)

    def _controller_state(self, inst: SimInstance, now_s: float) -> InstanceState | None:
        if self._ideal:
            return self._report(inst, now_s)
        return self._notices.newest(self._controller_view[inst.index], inst.instance_id)

    def _decide(self, inst: SimInstance, state: InstanceState, now_s: float) -> bool:
        """Run the phase's policy; a new clock reaches the agent one RPC later and takes effect
        after the GPU's clock-change delay. True when the clock target changed."""
        if inst.phase is Phase.PREFILL:
            policy = self.suite.prefill
        elif inst.phase is Phase.DECODE:
            policy = self.suite.decode
        else:
            policy = self._unified_law
        slo = self.config.slo
        if self._classed:  # the tightest targets the instance serves
            slo = self._served.law_target(inst.instance_id, slo)
        decision = policy.decide(state, slo, now_s)
        # Simulated agents never fail and leases never lapse: the target is the confirmed clock.
        if not needs_clock_command(
            decision.sm_clock_mhz, inst.target_clock_mhz, lease_held=True, now_s=now_s
        ):
            return False
        effective_s = now_s + self._rpc_s + self._clock_delay_s
        if inst.request_clock(effective_s, decision.sm_clock_mhz):
            self._push(effective_s, _CLOCK, inst.index)
            return True
        return False

    # ---- instance drivers -------------------------------------------------------------------
    def _kick(self, inst: SimInstance, now_s: float) -> None:
        """Start the instance's next iteration if it is free."""
        if inst.phase is Phase.PREFILL:
            self._kick_prefill(inst, now_s)
        elif inst.phase is Phase.DECODE:
            self._kick_decode(inst, now_s)
        else:
            self._kick_unified(inst, now_s)

    def _kick_unified(self, inst: SimInstance, now_s: float) -> None:
        """A colocated instance runs one pass at a time, prefill first (SGLang's scheduler
        runs a pass over waiting prompts before the next decode step)."""
        prefill, decode = inst.prefill, inst.decode
        assert prefill is not None and decode is not None
        if prefill.is_busy or decode.is_busy:
            return
        if prefill.queue_len:
            self._kick_prefill(inst, now_s)
        else:
            self._kick_decode(inst, now_s)

    def _kick_prefill(self, inst: SimInstance, now_s: float) -> None:
        scheduler = inst.prefill
        assert scheduler is not None
        if scheduler.is_busy:
            return
        inst.advance(now_s)
        iteration = scheduler.start_iteration(now_s, inst.sm_clock_mhz)
        if iteration is None:
            inst.busy = False
            inst.set_power(now_s, self.perf.idle_power_w(inst.sm_clock_mhz))
            if inst.state is DRAINING and inst.assigned == 0:
                self._stop(inst, now_s)
            return
        inst.work = WorkShares({job.key: float(chunk) for job, chunk in iteration.chunks})
        self._start(inst, now_s, iteration.latency_s, iteration.power_w, _PREFILL_DONE)

    def _kick_decode(self, inst: SimInstance, now_s: float) -> None:
        scheduler = inst.decode
        assert scheduler is not None
        if scheduler.is_busy:
            return
        inst.advance(now_s)
        iteration = scheduler.start_iteration(now_s, inst.sm_clock_mhz)
        if inst.phase is Phase.DECODE:  # (colocated: the first token came with the prefill)
            for job in scheduler.last_admitted:
                self._first_token(self._records[job.key], job.key, now_s)
        if iteration is None:
            inst.busy = False
            inst.set_power(now_s, self.perf.idle_power_w(inst.sm_clock_mhz))
            if inst.state is DRAINING and inst.assigned == 0:
                self._stop(inst, now_s)
            return
        if inst.work_batch_version != scheduler.batch_version:  # the batch changed
            inst.work = WorkShares.uniform(scheduler.running_keys())
            inst.work_batch_version = scheduler.batch_version
        self._start(inst, now_s, iteration.latency_s, iteration.power_w, _DECODE_DONE)

    def _start(
        self, inst: SimInstance, now_s: float, latency_s: float, power_w: float, kind: int
    ) -> None:
        inst.busy = True
        inst.set_power(now_s, power_w)
        inst.jitter_factor = self._jitter_factor()
        inst.pace_since_s = now_s
        inst.iteration_end_s = now_s + latency_s * inst.jitter_factor
        inst.completion_seq = self._push(inst.iteration_end_s, kind, inst.index)

    def _estimate_running(self, inst: SimInstance, clock_mhz: int) -> IterationEstimate:
        """The running iteration's latency and draw at another clock."""
        prefill = inst.prefill.running if inst.prefill is not None else None
        if prefill is not None:
            return self.perf.prefill_iteration(
                prefill.new_tokens, clock_mhz, prefill.attention_pairs
            )
        assert inst.decode is not None
        decode = inst.decode.running_iteration
        assert decode is not None
        return self.perf.decode_iteration(decode.batch_size, decode.kv_tokens, clock_mhz)

    def _on_clock(self, inst: SimInstance, now_s: float) -> None:
        """A clock change landed: a running iteration finishes its remainder at the new pace."""
        before_mhz = inst.sm_clock_mhz
        inst.advance(now_s)
        if not inst.busy or inst.sm_clock_mhz == before_mhz:
            return
        old = self._estimate_running(inst, before_mhz)
        new = self._estimate_running(inst, inst.sm_clock_mhz)
        remaining_s = (inst.iteration_end_s - now_s) * new.latency_s / old.latency_s
        inst.set_power(now_s, new.power_w)
        inst.pace_since_s = now_s
        inst.iteration_end_s = now_s + remaining_s
        prefilling = inst.prefill is not None and inst.prefill.running is not None
        kind = _PREFILL_DONE if prefilling else _DECODE_DONE
        inst.completion_seq = self._push(inst.iteration_end_s, kind, inst.index)

    def _first_token(self, record: RequestRecord, request_index: int, now_s: float) -> None:
        """The decode instance admitted the request: its first token reaches the client."""
        record.first_token_s = now_s
        decode_id = self.instances[record.decode_index].instance_id
        self._placements.reached(request_index, decode_id, now_s)

    # ---- event handlers ----------------------------------------------------------------------
    def _on_arrival(self, request_index: int, now_s: float) -> None:
        record = self._records[request_index]
        request = record.request
        if request.input_tokens > self._max_context:
            record.rejected = REJECT_PROMPT_TOO_LONG
            return
        if request.input_tokens + request.output_tokens + 1 > self._kv_capacity:
            record.rejected = REJECT_KV_CAPACITY
            return
        slo = request.slo or self.config.slo
        spec = RequestSpec(request.input_tokens, request.output_tokens, slo, now_s)
        if self._planner is not None:
            self._planner.observe_arrival(spec)
        placement = self._router.place(spec, self.snapshot(now_s))
        prefill = self._by_id[placement.prefill_id]
        decode = self._by_id[placement.decode_id]
        prefill.assigned += 1  # (a colocated instance: once for each phase)
        decode.assigned += 1
        if self._classed:
            self._served.open(request_index, (prefill.instance_id, decode.instance_id), request.slo)
        record.prefill_index = prefill.index
        record.decode_index = decode.index
        self._placements.place(
            request_index, prefill.instance_id, decode.instance_id, request.input_tokens, now_s
        )
        if self.config.loop.placement_trigger:
            # The router sends the controller the instances as it sees them now.
            placed = (prefill,) if prefill is decode else (prefill, decode)
            states = [self._router_state(inst, now_s) for inst in placed]
            if all(state is not None for state in states):
                self._pending_notices[request_index] = tuple(
                    replace(state, observed_at_s=now_s) for state in states if state is not None
                )
                self._push(now_s + self._rpc_s, _NOTIFY, request_index)
                return
        self._push(now_s + self._rpc_s, _DISPATCH, request_index)

    def _on_notify(self, request_index: int, now_s: float) -> None:
        """The controller decides for the placed instances at once, then answers the router,
        which dispatches the request (a changed clock costs the SetClocks round trip first)."""
        changed = False
        for state in self._pending_notices.pop(request_index):
            inst = self._by_id[state.instance_id]
            self._notices.notice(state)
            changed |= self._decide(inst, state, now_s)
        answer_s = now_s + (2 * self._rpc_s if changed else 0.0) + self._rpc_s
        self._push(answer_s + self._rpc_s, _DISPATCH, request_index)

    def _on_dispatch(self, request_index: int, now_s: float) -> None:
        """The request reaches its prefill engine."""
        record = self._records[request_index]
        prefill = self.instances[record.prefill_index]
        self._placements.reached(request_index, prefill.instance_id, now_s)
        prefill.last_activity_s = now_s
        assert prefill.prefill is not None
        prefill.prefill.enqueue(PrefillJob(request_index, record.request.input_tokens, now_s))
        self._kick(prefill, now_s)

    def _on_prefill_done(self, inst: SimInstance, now_s: float) -> int:
        """Returns how many requests completed (a one-token answer on a colocated instance)."""
        assert inst.prefill is not None
        if inst.phase is Phase.UNIFIED:
            return self._on_unified_prefill_done(inst, now_s)
        inst.advance(now_s)
        inst.busy = False
        kv_bytes_per_token = (
            self.perf.model.kv_bytes_per_token_per_gpu * self.perf.model.tensor_parallel
        )
        link_bytes_per_s = self.perf.gpu.kv_transfer_gb_s * 1e9 * inst.gpus
        for job in inst.prefill.finish_iteration():
            record = self._records[job.key]
            record.prefill_done_s = now_s
            inst.assigned -= 1
            if self._classed:
                self._served.leave(job.key, inst.instance_id)
            # Prefill-side TTFT, as the prefill engine measures it: receipt to first token.
            inst.observer.note_first_token(now_s, now_s - job.enqueued_s)
            transfer_s = job.input_tokens * kv_bytes_per_token / link_bytes_per_s
            self._push(now_s + transfer_s, _KV_ARRIVED, job.key)
        inst.last_activity_s = now_s
        self._kick_prefill(inst, now_s)
        return 0

    def _on_unified_prefill_done(self, inst: SimInstance, now_s: float) -> int:
        """A colocated prefill pass ended: finished prompts emit their first token and join
        the instance's own decode queue (their KV stays where it is)."""
        assert inst.prefill is not None and inst.decode is not None
        inst.advance(now_s)
        inst.busy = False
        completed = 0
        for job in inst.prefill.finish_iteration():
            record = self._records[job.key]
            request = record.request
            record.prefill_done_s = now_s
            inst.assigned -= 1
            inst.observer.note_first_token(now_s, now_s - job.enqueued_s)
            record.first_token_s = now_s
            if request.output_tokens <= 1:
                inst.assigned -= 1
                record.finish_s = now_s
                self._placements.finished(job.key)
                self._served.close(job.key)
                completed += 1
                continue
            inst.decode.enqueue(
                DecodeJob(job.key, request.input_tokens, request.output_tokens - 1, now_s)
            )
        inst.last_activity_s = now_s
        self._kick_unified(inst, now_s)
        return completed

    def _on_kv_arrived(self, request_index: int, now_s: float) -> None:
        record = self._records[request_index]
        request = record.request
        decode = self.instances[record.decode_index]
        if request.output_tokens <= 1:  # the prefill's token was the whole answer
            self._first_token(record, request_index, now_s)
            decode.assigned -= 1
            record.finish_s = now_s
            self._placements.finished(request_index)
            self._served.close(request_index)
            return
        assert decode.decode is not None
        decode.decode.enqueue(
            DecodeJob(request_index, request.input_tokens, request.output_tokens - 1, now_s)
        )
        decode.last_activity_s = now_s
        self._kick_decode(decode, now_s)

    def _on_decode_done(self, inst: SimInstance, now_s: float) -> int:
        """Returns how many requests completed."""
        assert inst.decode is not None
        inst.advance(now_s)
        inst.busy = False
        iteration = inst.decode.running_iteration
        assert iteration is not None
        if inst.phase is Phase.UNIFIED:
            # The batch's tokens came out this long after its previous ones: this step plus
            # any prefill passes run in between (what clients and SGLang's ITL see).
            gap_from_s = inst.decode_gap_from_s
            latency_s = now_s - (iteration.started_s if gap_from_s is None else gap_from_s)
        else:
            latency_s = now_s - iteration.started_s
        inst.observer.note_decode_step(now_s, latency_s, iteration.batch_size)
        self._decode_latency_s.append(latency_s)
        self._decode_batch.append(iteration.batch_size)
        finished = inst.decode.finish_iteration()
        inst.assigned -= len(finished)
        for job in finished:
            self._records[job.key].finish_s = now_s
            self._placements.finished(job.key)
            if self._classed:
                self._served.close(job.key)
        inst.last_activity_s = now_s
        if inst.phase is Phase.UNIFIED:
            inst.decode_gap_from_s = now_s if inst.decode.batch_size else None
            self._kick_unified(inst, now_s)
        else:
            self._kick_decode(inst, now_s)
        return len(finished)

    def _report_is_read(self, next_report_s: float) -> bool:
        """Whether a watch passes this report on before the instance's next one replaces it
        (a report and a watch at the same moment: the report comes first). Skipping an unread
        report only merges two stretches of the instance's energy integration."""
        if self._next_router_watch_s < next_report_s:
            return True
        return self._controller_reads and self._next_controller_watch_s < next_report_s

    def _on_report(self, inst: SimInstance, now_s: float) -> None:
        self._reports[inst.index] = self._report(inst, now_s)

    def _on_router_watch(self) -> None:
        for inst in self.instances:
            report = self._reports[inst.index]
            if report is not None:
                self._router_view[inst.index] = report
                self._placements.reported(report)

    def _on_controller_watch(self) -> None:
        self._controller_view = list(self._reports)

    def _on_control(self, now_s: float) -> None:
        for inst in self.instances:
            if inst.state is STOPPED or inst.state is STARTING:  # no engine to set clocks for
                continue
            state = self._controller_state(inst, now_s)
            if state is not None:
                self._decide(inst, state, now_s)

    # ---- run ---------------------------------------------------------------------------------
    def _schedule_loop(self, start_s: float) -> None:
        """The periodic events of the live loop: reports (staggered per instance), watches."""
        loop = self.config.loop
        if self._ideal:
            return
        interval_s = loop.report_interval_ms / 1e3
        for inst in self.instances:
            offset_s = interval_s * (inst.index + 1) / (len(self.instances) + 1)
            self._push(start_s + offset_s, _REPORT, inst.index)
        if loop.router_watch_ms > 0:
            self._next_router_watch_s = start_s + loop.router_watch_ms / 1e3
            self._push(self._next_router_watch_s, _ROUTER_WATCH, 0)
        if loop.controller_watch_ms > 0:
            self._next_controller_watch_s = start_s + loop.controller_watch_ms / 1e3
            self._push(self._next_controller_watch_s, _CONTROLLER_WATCH, 0)

    def _periodic(self, kind: int, payload: int, now_s: float) -> float:
        """Handle a periodic event; returns its period (seconds)."""
        loop = self.config.loop
        if kind == _REPORT:
            interval_s = loop.report_interval_ms / 1e3
            if self._report_is_read(now_s + interval_s):
                self._on_report(self.instances[payload], now_s)
            return interval_s
        if kind == _ROUTER_WATCH:
            self._on_router_watch()
            period_s = loop.router_watch_ms / 1e3
            self._next_router_watch_s = now_s + period_s
            return period_s
        if kind == _CONTROLLER_WATCH:
            self._on_controller_watch()
            period_s = loop.controller_watch_ms / 1e3
            self._next_controller_watch_s = now_s + period_s
            return period_s
        if kind == _CONTROL:
            self._on_control(now_s)
            return self.config.control_interval_ms / 1e3
        if kind == _PLAN:
            return self._on_plan(now_s)
        sample_s = self.config.sample_interval_s
        for inst in self.instances:
            inst.sample(now_s, sample_s)
        return sample_s

    def run(
        self, requests: Sequence[TraceRequest], progress: ProgressCallback | None = None
    ) -> SimulationResult:
        self._records = [RequestRecord(request) for request in requests]
        if not requests:
            raise ConfigError("the workload has no requests")
        self._classed = any(request.slo is not None for request in requests)
        start_s = requests[0].arrival_s
        for inst in self.instances:
            inst.start(start_s)
        for index, request in enumerate(requests):
            self._push(request.arrival_s, _ARRIVAL, index)
        # Every instance reports once at t0 (engines register with their state), and static
        # policies set their clocks once and for all at t0.
        for inst in self.instances:
            self._on_report(inst, start_s)
        self._on_router_watch()
        self._on_controller_watch()
        self._on_control(start_s)
        self._schedule_loop(start_s)
        if not self.suite.is_static:
            self._push(start_s + self.config.control_interval_ms / 1e3, _CONTROL, 0)
        self._push(start_s + self.config.sample_interval_s, _SAMPLE, 0)
        if self._planner is not None:
            self._note_counts(start_s)
            self._push(start_s + self._planner.interval_s, _PLAN, 0)
        pending_requests = len(requests)
        last_s = requests[-1].arrival_s
        end_s = start_s
        next_progress_s = start_s
        events = self._events
        instances = self.instances
        pop = heapq.heappop
        while events:
            now_s, kind, seq, payload = pop(events)
            # The commonest event first: a decode step ends.
            if kind == _DECODE_DONE:
                if seq != instances[payload].completion_seq:
                    continue  # superseded by a clock change
                pending_requests -= self._on_decode_done(instances[payload], now_s)
            elif kind in _PERIODIC:
                period_s = self._periodic(kind, payload, now_s)
                if pending_requests > 0:
                    self._push(now_s + period_s, kind, payload)
                continue
            elif kind == _PREFILL_DONE:
                if seq != instances[payload].completion_seq:
                    continue
                pending_requests -= self._on_prefill_done(instances[payload], now_s)
            elif kind == _CLOCK:
                self._on_clock(instances[payload], now_s)
                continue
            elif kind == _KV_ARRIVED:
                self._on_kv_arrived(payload, now_s)
                if self._records[payload].finish_s == now_s:
                    pending_requests -= 1
            elif kind == _ARRIVAL:
                self._on_arrival(payload, now_s)
                if self._records[payload].rejected is not None:
                    pending_requests -= 1
            elif kind == _NOTIFY:
                self._on_notify(payload, now_s)
            elif kind == _STARTED:
                self._on_started(instances[payload], now_s)
                continue
            else:  # _DISPATCH
                self._on_dispatch(payload, now_s)
            end_s = now_s
            if progress is not None and now_s >= next_progress_s:
                progress(min(1.0, (now_s - start_s) / max(1e-9, last_s - start_s)))
                next_progress_s = now_s + max(1.0, (last_s - start_s) / 200)
            if pending_requests == 0:
                break
        for inst in instances:
            inst.advance(end_s)
            inst.book_residency(end_s)
            inst.book_state(end_s)
            inst.ledger.settle()
        if progress is not None:
            progress(1.0)
        return SimulationResult(
            policy=self.suite.name,
            config=self.config,
            records=self._records,
            instance_ids=[inst.instance_id for inst in instances],
            energy_j_by_instance=[inst.energy_j for inst in instances],
            series=[inst.series for inst in instances],
            start_s=start_s,
            end_s=end_s,
            clock_changes=sum(inst.clock_changes for inst in instances),
            clock_residency_s=[inst.residency_s for inst in instances],
            energy_j_by_clock=[inst.energy_j_by_clock for inst in instances],
            calibrated_clock_range_mhz=calibrated_clock_range_mhz(self.perf),
            decode_iteration_latency_s=self._decode_latency_s,
            decode_iteration_batch=self._decode_batch,
            request_energy=self._request_energy(),
            elastic=self._elastic_record(end_s) if self._planner is not None else None,
        )

    # ---- elasticity ----------------------------------------------------------------------------
    def _on_plan(self, now_s: float) -> float:
        """The planner's tick: bring each phase's in-service count to its target. Returns the
        planner's interval."""
        planner = self._planner
        assert planner is not None
        sizes = {phase: len(pool) for phase, pool in self._pools.items() if pool}
        decision = planner.plan(PlanInput(now_s, self._costs.start_s, sizes))
        changed = False
        for phase, target in decision.targets.items():
            changed |= self._reconcile(self._pools[phase], max(1, target), now_s)
        if changed:
            self._note_counts(now_s)
        return planner.interval_s

    def _reconcile(self, pool: list[SimInstance], target: int, now_s: float) -> bool:
        """Drain, recall or start instances of one phase until ``target`` are serving or
        starting; one always keeps serving. True when anything changed."""
        active = [inst for inst in pool if inst.state is SERVING or inst.state is STARTING]
        changed = False
        if len(active) < target:
            # A draining instance is recalled first (it is still up), then stopped ones start.
            spare = [inst for inst in pool if inst.state is DRAINING] + [
                inst for inst in pool if inst.state is STOPPED
            ]
            for inst in spare[: target - len(active)]:
                if inst.state is DRAINING:
                    inst.set_state(now_s, SERVING)
                else:
                    self._begin_start(inst, now_s)
                changed = True
        elif len(active) > target:
            serving = [inst for inst in active if inst.state is SERVING]
            excess = min(len(active) - target, len(serving) - 1)
            for inst in choose_to_drain(serving, excess):
                self._drain(inst, now_s)
                changed = True
        return changed

    def _drain(self, inst: SimInstance, now_s: float) -> None:
        """The router stops placing on ``inst``; it stops once its requests are done."""
        inst.set_state(now_s, DRAINING)
        if inst.assigned == 0 and not inst.busy:
            self._stop(inst, now_s)

    def _stop(self, inst: SimInstance, now_s: float) -> None:
        """The engine goes: no context, the GPU locked at its lowest clock, drawing what a
        stopped GPU is counted at."""
        inst.set_state(now_s, STOPPED)
        inst.book_residency(now_s)
        low_mhz = calibrated_clock_range_mhz(self.perf)[0]
        inst.sm_clock_mhz = inst.target_clock_mhz = low_mhz
        inst.pending_clock = None
        inst.set_power(now_s, self._stopped_w)
        self._note_counts(now_s)

    def _begin_start(self, inst: SimInstance, now_s: float) -> None:
        """The engine starts: its GPU draws the start power until the start time has passed."""
        inst.set_state(now_s, STARTING)
        inst.book_residency(now_s)
        inst.sm_clock_mhz = inst.target_clock_mhz = self.config.gpu.default_sm_clock_mhz
        inst.set_power(now_s, self._costs.starting_w)
        self._push(now_s + self._costs.start_s, _STARTED, inst.index)

    def _on_started(self, inst: SimInstance, now_s: float) -> None:
        inst.set_state(now_s, SERVING)
        inst.set_power(now_s, self.perf.idle_power_w(inst.sm_clock_mhz))
        inst.last_activity_s = now_s
        self._note_counts(now_s)

    def _note_counts(self, now_s: float) -> None:
        """Record the instances serving per phase, and those starting, from ``now_s`` on."""
        serving = [
            sum(inst.state is SERVING or inst.state is DRAINING for inst in pool)
            for pool in (self._prefill, self._decode, self._unified)
        ]
        starting = sum(inst.state is STARTING for inst in self.instances)
        row = (now_s, serving[0], serving[1], serving[2], starting)
        if self._count_series and self._count_series[-1][1:] == row[1:]:
            return
        self._count_series.append(row)

    def _elastic_record(self, end_s: float) -> ElasticRecord:
        return ElasticRecord(
            costs=self._costs,
            released_gpu_w=self.config.released_gpu_w,
            gpus_per_instance=self.config.gpus_per_instance,
            time_s_by_state=[dict(inst.time_s_by_state) for inst in self.instances],
            energy_j_by_state=[dict(inst.energy_j_by_state) for inst in self.instances],
            count_series=list(self._count_series),
            end_s=end_s,
        )

    def _request_energy(self) -> list[RequestEnergy]:
        """Each request's attributed energy, summed over the instances it ran on; the idle
        energy of instances that served nobody is spread over every request."""
        energy = [RequestEnergy() for _ in self._records]
        for inst in self.instances:
            for index, share in inst.ledger.shares().items():
                energy[index] = energy[index] + share
        unclaimed_j = sum(inst.ledger.pending_idle_j for inst in self.instances)
        return spread_unclaimed(energy, unclaimed_j)
