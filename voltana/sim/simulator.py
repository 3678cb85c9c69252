"""Deterministic discrete-event simulation of a PD-disaggregated cluster in virtual time.

Arrivals are placed by the routing policy on a snapshot of every instance; prefill instances run
chunked FCFS prefill, ship KV to their decode partner, and decode instances run continuous
batching. A control tick hands each instance's state to its phase's frequency policy; a clock
change takes effect after the configured delay. Energy integrates every GPU's power, idle time
included, from the first arrival to the last completion.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from voltana.energy import EnergyLedger, RequestEnergy, spread_unclaimed
from voltana.errors import ConfigError
from voltana.perf.model import IterationEstimate, PerformanceModel
from voltana.policy.base import PolicySuite
from voltana.policy.state import ClusterSnapshot, InstanceState, Phase, RequestSpec
from voltana.report import RunOutcome
from voltana.sim.cluster import ClusterConfig
from voltana.sim.scheduling import DecodeJob, DecodeScheduler, PrefillJob, PrefillScheduler
from voltana.workloads.request import TraceRequest

# Event kinds, ordered so simultaneous events resolve deterministically.
_ARRIVAL, _PREFILL_DONE, _KV_ARRIVED, _DECODE_DONE, _CONTROL, _SAMPLE, _CLOCK = range(7)

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


@dataclass
class InstanceSeries:
    """Per-instance samples for plots: one row every `sample_interval_s`."""

    time_s: list[float] = field(default_factory=list)
    sm_clock_mhz: list[int] = field(default_factory=list)
    power_w: list[float] = field(default_factory=list)  # average since the previous sample
    queue_len: list[int] = field(default_factory=list)
    running_batch: list[int] = field(default_factory=list)


class _Instance:
    """One simulated instance: its scheduler, its clock, its power and energy accounting."""

    def __init__(
        self,
        index: int,
        instance_id: str,
        phase: Phase,
        perf: PerformanceModel,
        config: ClusterConfig,
    ) -> None:
        self.index = index
        self.instance_id = instance_id
        self.phase = phase
        self.perf = perf
        self.gpus = config.gpus_per_instance
        self.prefill: PrefillScheduler[int] | None = None
        self.decode: DecodeScheduler[int] | None = None
        if phase is Phase.PREFILL:
            self.prefill = PrefillScheduler(perf, token_budget=config.chunked_prefill_tokens)
        else:
            self.decode = DecodeScheduler(perf, max_running_requests=config.max_running_requests)
        self.sm_clock_mhz = config.gpu.default_sm_clock_mhz
        self.target_clock_mhz = self.sm_clock_mhz
        self.pending_clock: tuple[float, int] | None = None  # (effective at, MHz)
        self.power_w = perf.idle_power_w(self.sm_clock_mhz)
        self.power_since_s = 0.0
        self.energy_j = 0.0
        self.sample_energy_j = 0.0
        self.clock_changes = 0
        self.busy = False
        # Energy per request (voltana.energy): the running iteration's work, request → weight.
        self.ledger: EnergyLedger[int] = EnergyLedger()
        self.work: dict[int, float] = {}
        # The running iteration: when its current pace began, when it ends, which event ends it,
        # and how to re-estimate it at another clock (a clock change speeds up the remainder).
        self.pace_since_s = 0.0
        self.iteration_end_s = 0.0
        self.completion_seq = -1
        self.jitter_factor = 1.0
        self.estimate_at: Callable[[int], IterationEstimate] | None = None
        self.last_activity_s = 0.0
        self.window_s = config.observation_window_s
        self.arrivals: deque[float] = deque()
        self.recent_latency_ms: deque[tuple[float, float]] = deque()
        self.series = InstanceSeries()

    # ---- energy and clocks ----------------------------------------------------------------
    def advance(self, now_s: float) -> None:
        """Integrate energy up to ``now_s``, applying a pending clock change on the way."""
        pending = self.pending_clock
        if pending is not None and pending[0] <= now_s:
            effective_s, clock_mhz = pending
            self._integrate(effective_s)
            self.sm_clock_mhz = clock_mhz
            self.pending_clock = None
            if not self.busy:  # an idle GPU's draw follows its clock at once
                self.power_w = self.perf.idle_power_w(clock_mhz)
        self._integrate(now_s)

    def _integrate(self, now_s: float) -> None:
        if now_s > self.power_since_s:
            energy_j = self.power_w * self.gpus * (now_s - self.power_since_s)
            self.energy_j += energy_j
            self.ledger.charge(energy_j, self.work if self.busy else None)
            self.power_since_s = now_s

    def request_clock(self, now_s: float, clock_mhz: int, delay_s: float) -> bool:
        """Returns True when a change was requested (the caller schedules its effect)."""
        if clock_mhz == self.target_clock_mhz:
            return False
        self.target_clock_mhz = clock_mhz
        self.clock_changes += 1
        self.pending_clock = (now_s + delay_s, clock_mhz)
        return True

    def set_power(self, now_s: float, power_w: float) -> None:
        self._integrate(now_s)
        self.power_w = power_w

    # ---- observation ----------------------------------------------------------------------
    def note_arrival(self, now_s: float) -> None:
        self.arrivals.append(now_s)
        self.last_activity_s = now_s

    def note_latency(self, now_s: float, latency_ms: float) -> None:
        self.recent_latency_ms.append((now_s, latency_ms))

    def _trim(self, now_s: float) -> None:
        horizon = now_s - self.window_s
        while self.arrivals and self.arrivals[0] < horizon:
            self.arrivals.popleft()
        while self.recent_latency_ms and self.recent_latency_ms[0][0] < horizon:
            self.recent_latency_ms.popleft()

    def state(self, now_s: float) -> InstanceState:
        self._trim(now_s)
        recent: float | None = None
        if self.recent_latency_ms:
            values = [v for _, v in self.recent_latency_ms]
            if self.phase is Phase.PREFILL:  # TTFT: the window's p90, as telemetry reports it
                values.sort()
                recent = values[min(len(values) - 1, int(0.9 * len(values)))]
            else:  # ITL: the window's mean iteration time
                recent = sum(values) / len(values)
        rate = len(self.arrivals) / self.window_s
        common: dict[str, Any] = {
            "instance_id": self.instance_id,
            "phase": self.phase,
            "gpu_key": self.perf.gpu.key,
            "sm_clock_mhz": self.sm_clock_mhz,
            "arrival_rate_rps": rate,
            "power_w": self.power_w,
            "energy_j": self.energy_j,
            "observed_at_s": now_s,
            "last_activity_s": self.last_activity_s,
        }
        if self.prefill is not None:
            prefill = self.prefill
            oldest = prefill.oldest_waiting_enqueued_s()
            running = prefill.running
            return InstanceState(
                queue_len=prefill.waiting_len,
                queued_tokens=prefill.waiting_tokens,
                oldest_wait_ms=(now_s - oldest) * 1e3 if oldest is not None else 0.0,
                running_prefill_tokens=running.new_tokens if running else 0,
                recent_ttft_ms=recent,
                **common,
            )
        decode = self.decode
        assert decode is not None
        oldest = decode.oldest_enqueued_s()
        return InstanceState(
            queue_len=decode.queue_len,
            oldest_wait_ms=(now_s - oldest) * 1e3 if oldest is not None else 0.0,
            running_batch=decode.batch_size,
            kv_tokens_used=decode.kv_tokens_used,
            kv_tokens_capacity=decode.kv_capacity_tokens,
            max_running_requests=decode.max_running_requests,
            recent_itl_ms=recent,
            remaining_output_tokens=decode.remaining_output_tokens(),
            **common,
        )

    def sample(self, now_s: float, interval_s: float) -> None:
        self.advance(now_s)
        series = self.series
        energy = self.energy_j - self.sample_energy_j
        self.sample_energy_j = self.energy_j
        series.time_s.append(now_s)
        series.sm_clock_mhz.append(self.sm_clock_mhz)
        series.power_w.append(energy / (interval_s * self.gpus) if interval_s > 0 else 0.0)
        if self.prefill is not None:
            series.queue_len.append(self.prefill.queue_len)
            series.running_batch.append(
                len(self.prefill.running.chunks) if self.prefill.running else 0
            )
        else:
            assert self.decode is not None
            series.queue_len.append(self.decode.queue_len)
            series.running_batch.append(self.decode.batch_size)


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

    @property
    def energy_j(self) -> float:
        return sum(self.energy_j_by_instance)

    def outcome(self) -> RunOutcome:
        ttft_ms: list[float] = []
        itl_ms: list[float] = []
        output_tokens = 0
        rejected: dict[str, int] = {}
        for record in self.records:
            if record.rejected is not None:
                rejected[record.rejected] = rejected.get(record.rejected, 0) + 1
                continue
            request = record.request
            ttft_ms.append((record.first_token_s - request.arrival_s) * 1e3)
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
            token_itl_ms=[v * 1e3 for v in self.decode_iteration_latency_s],
            token_itl_weights=self.decode_iteration_batch,
            request_energy_j=(
                [
                    (energy.active_j, energy.idle_j)
                    for record, energy in zip(self.records, self.request_energy, strict=True)
                    if record.completed
                ]
                if self.request_energy
                else None
            ),
            extra={"clock_changes": self.clock_changes},
        )


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
        self._jitter = config.latency_jitter
        self._delay_s = config.clock_change_delay_ms / 1e3
        self.instances: list[_Instance] = []
        for n in range(config.num_prefill):
            self.instances.append(_Instance(n, f"prefill-{n}", Phase.PREFILL, perf, config))
        for n in range(config.num_decode):
            index = config.num_prefill + n
            self.instances.append(_Instance(index, f"decode-{n}", Phase.DECODE, perf, config))
        self._prefill = self.instances[: config.num_prefill]
        self._decode = self.instances[config.num_prefill :]
        self._by_id = {inst.instance_id: inst for inst in self.instances}
        self._events: list[tuple[float, int, int, int]] = []
        self._seq = 0
        self._records: list[RequestRecord] = []
        self._decode_latency_s: list[float] = []
        self._decode_batch: list[int] = []
        self._max_context = perf.model.max_context_tokens
        self._kv_capacity = perf.kv_capacity_tokens()

    # ---- event plumbing -------------------------------------------------------------------
    def _push(self, time_s: float, kind: int, payload: int) -> int:
        self._seq += 1
        heapq.heappush(self._events, (time_s, kind, self._seq, payload))
        return self._seq

    def _jittered(self, latency_s: float) -> float:
        if self._jitter <= 0:
            return latency_s
        return latency_s * max(0.5, 1.0 + self._rng.gauss(0.0, self._jitter))

    def snapshot(self, now_s: float) -> ClusterSnapshot:
        return ClusterSnapshot(
            now_s,
            {inst.instance_id: inst.state(now_s) for inst in self._prefill},
            {inst.instance_id: inst.state(now_s) for inst in self._decode},
        )

    # ---- instance drivers -------------------------------------------------------------------
    def _kick_prefill(self, inst: _Instance, now_s: float) -> None:
        scheduler = inst.prefill
        assert scheduler is not None
        if scheduler.is_busy:
            return
        inst.advance(now_s)
        iteration = scheduler.start_iteration(now_s, inst.sm_clock_mhz)
        if iteration is None:
            inst.busy = False
            inst.set_power(now_s, self.perf.idle_power_w(inst.sm_clock_mhz))
            return
        tokens, pairs = iteration.new_tokens, iteration.attention_pairs
        inst.work = {job.key: float(chunk) for job, chunk in iteration.chunks}
        self._start(
            inst,
            now_s,
            iteration.latency_s,
            iteration.power_w,
            _PREFILL_DONE,
            lambda clock: self.perf.prefill_iteration(tokens, clock, pairs),
        )

    def _kick_decode(self, inst: _Instance, now_s: float) -> None:
        scheduler = inst.decode
        assert scheduler is not None
        if scheduler.is_busy:
            return
        inst.advance(now_s)
        iteration = scheduler.start_iteration(now_s, inst.sm_clock_mhz)
        for job in scheduler.last_admitted:
            self._first_token(self._records[job.key], now_s)
        if iteration is None:
            inst.busy = False
            inst.set_power(now_s, self.perf.idle_power_w(inst.sm_clock_mhz))
            return
        batch, kv_tokens = iteration.batch_size, iteration.kv_tokens
        inst.work = {job.key: 1.0 for job in scheduler.running_jobs()}
        self._start(
            inst,
            now_s,
            iteration.latency_s,
            iteration.power_w,
            _DECODE_DONE,
            lambda clock: self.perf.decode_iteration(batch, kv_tokens, clock),
        )

    def _start(
        self,
        inst: _Instance,
        now_s: float,
        latency_s: float,
        power_w: float,
        kind: int,
        estimate_at: Callable[[int], IterationEstimate],
    ) -> None:
        inst.busy = True
        inst.set_power(now_s, power_w)
        inst.jitter_factor = self._jittered(1.0)
        inst.pace_since_s = now_s
        inst.iteration_end_s = now_s + latency_s * inst.jitter_factor
        inst.estimate_at = estimate_at
        inst.completion_seq = self._push(inst.iteration_end_s, kind, inst.index)

    def _on_clock(self, inst: _Instance, now_s: float) -> None:
        """A clock change landed: a running iteration finishes its remainder at the new pace."""
        before_mhz = inst.sm_clock_mhz
        inst.advance(now_s)
        if not inst.busy or inst.sm_clock_mhz == before_mhz or inst.estimate_at is None:
            return
        old = inst.estimate_at(before_mhz)
        new = inst.estimate_at(inst.sm_clock_mhz)
        remaining_s = (inst.iteration_end_s - now_s) * new.latency_s / old.latency_s
        inst.set_power(now_s, new.power_w)
        inst.pace_since_s = now_s
        inst.iteration_end_s = now_s + remaining_s
        kind = _PREFILL_DONE if inst.phase is Phase.PREFILL else _DECODE_DONE
        inst.completion_seq = self._push(inst.iteration_end_s, kind, inst.index)

    def _first_token(self, record: RequestRecord, now_s: float) -> None:
        record.first_token_s = now_s
        ttft_ms = (now_s - record.request.arrival_s) * 1e3
        self.instances[record.prefill_index].note_latency(now_s, ttft_ms)

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
        spec = RequestSpec(request.input_tokens, request.output_tokens, self.config.slo, now_s)
        placement = self.suite.router.place(spec, self.snapshot(now_s))
        prefill = self._by_id[placement.prefill_id]
        decode = self._by_id[placement.decode_id]
        record.prefill_index = prefill.index
        record.decode_index = decode.index
        prefill.note_arrival(now_s)
        decode.note_arrival(now_s)
        assert prefill.prefill is not None
        prefill.prefill.enqueue(PrefillJob(request_index, request.input_tokens, now_s))
        self._kick_prefill(prefill, now_s)

    def _on_prefill_done(self, inst: _Instance, now_s: float) -> None:
        assert inst.prefill is not None
        inst.advance(now_s)
        inst.busy = False
        kv_bytes_per_token = (
            self.perf.model.kv_bytes_per_token_per_gpu * self.perf.model.tensor_parallel
        )
        link_bytes_per_s = self.perf.gpu.kv_transfer_gb_s * 1e9 * inst.gpus
        for job in inst.prefill.finish_iteration():
            record = self._records[job.key]
            record.prefill_done_s = now_s
            transfer_s = job.input_tokens * kv_bytes_per_token / link_bytes_per_s
            self._push(now_s + transfer_s, _KV_ARRIVED, job.key)
        inst.last_activity_s = now_s
        self._kick_prefill(inst, now_s)

    def _on_kv_arrived(self, request_index: int, now_s: float) -> None:
        record = self._records[request_index]
        request = record.request
        decode = self.instances[record.decode_index]
        if request.output_tokens <= 1:  # the prefill's token was the whole answer
            self._first_token(record, now_s)
            record.finish_s = now_s
            return
        assert decode.decode is not None
        decode.decode.enqueue(
            DecodeJob(request_index, request.input_tokens, request.output_tokens - 1, now_s)
        )
        self._kick_decode(decode, now_s)

    def _on_decode_done(self, inst: _Instance, now_s: float) -> int:
        """Returns how many requests completed."""
        assert inst.decode is not None
        inst.advance(now_s)
        inst.busy = False
        iteration = inst.decode.running_iteration
        assert iteration is not None
        latency_s = now_s - iteration.started_s
        inst.note_latency(now_s, latency_s * 1e3)
        self._decode_latency_s.append(latency_s)
        self._decode_batch.append(iteration.batch_size)
        finished = inst.decode.finish_iteration()
        for job in finished:
            self._records[job.key].finish_s = now_s
        inst.last_activity_s = now_s
        self._kick_decode(inst, now_s)
        return len(finished)

    def _on_control(self, now_s: float) -> None:
        slo = self.config.slo
        for inst in self.instances:
            inst.advance(now_s)
            policy = self.suite.prefill if inst.phase is Phase.PREFILL else self.suite.decode
            decision = policy.decide(inst.state(now_s), slo, now_s)
            if inst.request_clock(now_s, decision.sm_clock_mhz, self._delay_s):
                self._push(now_s + self._delay_s, _CLOCK, inst.index)

    # ---- run ---------------------------------------------------------------------------------
    def run(
        self, requests: Sequence[TraceRequest], progress: ProgressCallback | None = None
    ) -> SimulationResult:
        self._records = [RequestRecord(request) for request in requests]
        if not requests:
            raise ConfigError("the workload has no requests")
        start_s = requests[0].arrival_s
        for inst in self.instances:
            inst.power_since_s = start_s
            inst.last_activity_s = start_s
        for index, request in enumerate(requests):
            self._push(request.arrival_s, _ARRIVAL, index)
        # Initial decision at t0, so static policies set their clocks once and for all.
        self._on_control(start_s)
        if not self.suite.is_static:
            self._push(start_s + self.config.control_interval_ms / 1e3, _CONTROL, 0)
        sample_s = self.config.sample_interval_s
        self._push(start_s + sample_s, _SAMPLE, 0)
        pending_requests = len(requests)
        last_s = requests[-1].arrival_s if requests else start_s
        end_s = start_s
        next_progress_s = start_s
        events = self._events
        instances = self.instances
        while events:
            now_s, kind, seq, payload = heapq.heappop(events)
            if kind == _DECODE_DONE:
                if seq != instances[payload].completion_seq:
                    continue  # superseded by a clock change
                pending_requests -= self._on_decode_done(instances[payload], now_s)
            elif kind == _PREFILL_DONE:
                if seq != instances[payload].completion_seq:
                    continue
                self._on_prefill_done(instances[payload], now_s)
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
            elif kind == _CONTROL:
                self._on_control(now_s)
                if pending_requests > 0:
                    self._push(now_s + self.config.control_interval_ms / 1e3, _CONTROL, 0)
            else:  # _SAMPLE
                for inst in instances:
                    inst.sample(now_s, sample_s)
                if pending_requests > 0:
                    self._push(now_s + sample_s, _SAMPLE, 0)
            if kind != _CONTROL and kind != _SAMPLE:
                end_s = now_s
            if progress is not None and now_s >= next_progress_s:
                progress(min(1.0, (now_s - start_s) / max(1e-9, last_s - start_s)))
                next_progress_s = now_s + max(1.0, (last_s - start_s) / 200)
            if pending_requests == 0 and kind not in (_CONTROL, _SAMPLE):
                break
        for inst in instances:
            inst.advance(end_s)
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
            decode_iteration_latency_s=self._decode_latency_s,
            decode_iteration_batch=self._decode_batch,
            request_energy=self._request_energy(),
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
