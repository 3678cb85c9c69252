"""The simulated engine's scheduling core: requests, the iteration loop, GPU power, statistics.

No HTTP here. ``PrefillScheduler``/``DecodeScheduler`` decide every batch (the same rules as the
offline simulator); this module paces their iterations in real time, reads the GPU clock for each
iteration, sets the GPU's power draw to the iteration's, and turns finished iterations into
per-request ``Progress`` events that the HTTP layer streams out.

Timestamps are simulated seconds from the injected clock. Each iteration is stamped with its
scheduled times (start + model latency), and back-to-back iterations start exactly where the
previous one ended, so event-loop jitter does not leak into the latencies the engine reports.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from voltana.batching.scheduling import (
    DecodeJob,
    DecodeScheduler,
    PrefillJob,
    PrefillScheduler,
    decode_gauges,
    prefill_gauges,
    unified_gauges,
)
from voltana.contract.state import InstanceState, Phase
from voltana.energy import EnergyLedger, RequestEnergy
from voltana.engine.errors import EngineRequestError
from voltana.engine.kv_handoff import KvHandoff, KvMailbox
from voltana.engine.protocol import FinishReason, GenerateRequest, abort_finish, length_finish
from voltana.engine.settings import EngineMode
from voltana.engine.stats import EngineMetrics, WindowedSamples
from voltana.engine.stopping import check_stop
from voltana.engine.tokenizer import ToyTokenizer
from voltana.gpu.device import GpuDevice
from voltana.gpu.errors import GpuError
from voltana.gpu.sim import SimulatedGpu
from voltana.lifecycle import cancel_and_wait
from voltana.observation import EngineGauges, InstanceObserver, ObservationConfig
from voltana.perf.model import IterationEstimate, PerformanceModel

logger = logging.getLogger(__name__)

# Back-to-back iterations may lag the wall clock by this much before the engine stops catching
# up (wall seconds); beyond it the next iteration starts "now".
DEFAULT_CATCH_UP_WALL_S = 0.02
# How often a running iteration checks its GPU's clock (wall seconds), to re-pace on a change.
_REPACE_CHECK_WALL_S = 0.01


_PHASES = {
    EngineMode.PREFILL: Phase.PREFILL,
    EngineMode.DECODE: Phase.DECODE,
    EngineMode.NULL: Phase.UNIFIED,
}


def engine_phase(mode: EngineMode) -> Phase:
    """The phase an engine of ``mode`` serves (null: prefill and decode, colocated)."""
    return _PHASES[mode]


class Stage(enum.Enum):
    PREFILL = "prefill"  # queued for or inside prefill
    KV_WAIT = "kv_wait"  # decode instance: waiting for the prefill's KV cache
    DECODE = "decode"  # queued for or inside the decode batch
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Progress:
    """New output of one request; ``finish_reason`` is set on its last event."""

    new_token_ids: tuple[int, ...]
    finish_reason: FinishReason | None
    at_s: float


@dataclass(eq=False)
class RequestState:
    key: int
    request: GenerateRequest
    seed: int
    arrival_s: float
    events: asyncio.Queue[Progress] = field(default_factory=asyncio.Queue)
    stage: Stage = Stage.PREFILL
    output_ids: list[int] = field(default_factory=list)
    first_token_s: float | None = None
    last_token_s: float | None = None
    finish_reason: FinishReason | None = None
    finished_s: float | None = None
    prefill_job: PrefillJob[int] | None = None
    # Decode instance: the task fetching the KV cache (cancelled when the request is dropped).
    kv_wait: asyncio.Task[KvHandoff] | None = None

    @property
    def done(self) -> bool:
        return self.stage is Stage.DONE


@dataclass(frozen=True, slots=True)
class _Iteration:
    kind: Phase
    started_s: float
    latency_s: float
    power_w: float
    # How the iteration's work splits among requests (voltana.energy): prompt tokens each
    # computes (prefill), one slot each (decode).
    work: dict[int, float] = field(default_factory=dict)
    # The clock it is paced at, and its latency and power at any clock (for a clock change
    # that lands while it runs: the remainder runs at the new pace, as on a real GPU).
    sm_clock_mhz: int = 0
    estimate_at: Callable[[int], IterationEstimate] | None = None

    @property
    def end_s(self) -> float:
        return self.started_s + self.latency_s


def _constant_power(power_w: float) -> Callable[[int], float]:
    """A power source that ignores the clock (the iteration's power was priced at its clock)."""

    def power_source(_sm_clock_mhz: int) -> float:
        return power_w

    return power_source


class EngineCore:
    """One instance's schedulers and iteration loop. Call ``start``/``stop`` inside a loop."""

    def __init__(
        self,
        *,
        mode: EngineMode,
        perf: PerformanceModel,
        gpu: GpuDevice | Sequence[GpuDevice],
        clock: Callable[[], float],
        speedup: float,
        max_running_requests: int,
        chunked_prefill_size: int,
        max_prefill_requests: int,
        kv_capacity_tokens: int = 0,
        recent_window_s: float = 5.0,
        tensor_parallel: int = 1,
        kv_outbox: KvMailbox | None = None,
        catch_up_wall_s: float = DEFAULT_CATCH_UP_WALL_S,
    ) -> None:
        if mode is EngineMode.PREFILL and kv_outbox is None:
            raise ValueError("a prefill engine needs a KV mailbox")
        self.mode = mode
        # What the engine registers as (a null-mode engine is a colocated one).
        self.phase = _PHASES[mode]
        self.perf = perf
        # One GPU per tensor-parallel rank (or one standing for every rank).
        self.gpus: tuple[GpuDevice, ...] = (gpu,) if isinstance(gpu, GpuDevice) else tuple(gpu)
        if not self.gpus:
            raise ValueError("an engine needs at least one GPU")
        self.gpu = self.gpus[0]
        self.tokenizer = ToyTokenizer(perf.model.vocab_size)
        self.kv_outbox = kv_outbox
        self._clock = clock
        self._speedup = speedup
        self._catch_up_wall_s = catch_up_wall_s
        self._tensor_parallel = tensor_parallel
        self.kv_capacity_tokens = kv_capacity_tokens or perf.kv_capacity_tokens()
        self.max_prefill_requests = max_prefill_requests
        self.prefill: PrefillScheduler[int] | None = None
        self.decode: DecodeScheduler[int] | None = None
        if mode in (EngineMode.PREFILL, EngineMode.NULL):
            self.prefill = PrefillScheduler(perf, chunked_prefill_size, max_prefill_requests)
        if mode in (EngineMode.DECODE, EngineMode.NULL):
            self.decode = DecodeScheduler(perf, max_running_requests, self.kv_capacity_tokens)
        self.metrics = EngineMetrics()
        # Recent TTFT/ITL exactly as the observation contract (and the offline simulator)
        # defines them; arrival rates are counted at placement by the router, not here.
        self._observer = InstanceObserver(
            self.phase,
            perf.gpu.key,
            ObservationConfig(window_s=recent_window_s),
        )
        self._generated_window = WindowedSamples(recent_window_s)
        self._requests: dict[int, RequestState] = {}
        self._keys = itertools.count()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._running: _Iteration | None = None
        self._last_end_s: float | None = None
        # When work last arrived (None once an iteration took it).
        self._work_arrived_s: float | None = None
        # Prefill jobs cancelled while inside the running iteration; dropped once it ends.
        self._cancel_after_prefill: set[int] = set()
        self._sm_clock_mhz = self.gpu.default_sm_clock_mhz
        self._clock_error_logged = False
        # Energy per request: the GPU's energy counter, read at every iteration boundary, is
        # split among the requests of each iteration (idle stretches go to the next one).
        self.ledger: EnergyLedger[int] = EnergyLedger()
        self._work: dict[int, float] | None = None
        self._energy_seen_j: float | None = None
        self._energy_error_logged = False
        self._started_s = clock()
        self._last_activity_s = self._started_s

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._loop_task is None:
            self._started_s = self._clock()
            self._set_idle_power()
            self._meter_energy()  # the counter's starting point
            self._loop_task = asyncio.create_task(self._run(), name=f"engine-loop-{self.mode}")

    async def stop(self) -> None:
        task, self._loop_task = self._loop_task, None
        await cancel_and_wait([task])
        self._set_power_source(_constant_power(self.perf.gpu.idle_w))  # no CUDA context left

    # ---- requests --------------------------------------------------------------------------
    @property
    def live_requests(self) -> int:
        """Admitted requests not finished yet."""
        return sum(1 for state in self._requests.values() if not state.done)

    def requests(self) -> list[RequestState]:
        return list(self._requests.values())

    def _check_request(self, request: GenerateRequest) -> None:
        prompt, max_new = request.prompt_tokens, request.max_new_tokens
        context_tokens = self.perf.model.max_context_tokens
        if prompt + max_new > context_tokens:
            raise EngineRequestError(
                f"Requested token count exceeds the model's maximum context length of "
                f"{context_tokens} tokens. You requested a total of {prompt + max_new} tokens: "
                f"{prompt} tokens from the input and {max_new} tokens for the completion."
            )
        needed_kv = prompt + 1 if self.mode is EngineMode.PREFILL else prompt + max_new
        if needed_kv > self.kv_capacity_tokens:
            raise EngineRequestError(
                f"the request needs {needed_kv} KV-cache tokens but this instance holds at most "
                f"{self.kv_capacity_tokens} (max_total_num_tokens)"
            )
        bootstrap = request.bootstrap
        if self.mode is EngineMode.PREFILL and bootstrap is None:
            raise EngineRequestError("a prefill instance needs 'bootstrap_room'")
        # Without 'bootstrap_port' a decode instance uses SGLang's default bootstrap port.
        if self.mode is EngineMode.DECODE and (bootstrap is None or bootstrap.host is None):
            raise EngineRequestError(
                "a decode instance needs 'bootstrap_host' and 'bootstrap_room'"
            )

    def admit(self, request: GenerateRequest) -> RequestState:
        """Take a request in (raises ``EngineRequestError`` when it can never be served)."""
        self._check_request(request)
        now_s = self._clock()
        state = RequestState(
            key=next(self._keys),
            request=request,
            seed=self.tokenizer.prompt_seed(request.input_ids),
            arrival_s=now_s,
        )
        self._requests[state.key] = state
        self._last_activity_s = now_s
        if self.mode is EngineMode.DECODE:
            state.stage = Stage.KV_WAIT
        else:
            assert self.prefill is not None
            state.prefill_job = PrefillJob(state.key, request.prompt_tokens, now_s)
            self.prefill.enqueue(state.prefill_job)
            self._work_arrived(now_s)
        return state

    def start_decode(self, state: RequestState, first_token_id: int) -> None:
        """Decode instance: the KV cache arrived; emit the prefill's token and join the batch."""
        if state.done:
            return
        now_s = self._clock()
        if state.request.max_new_tokens == 0:
            self._finish(state, length_finish(0), now_s, ())
            return
        self._emit_first_token(state, first_token_id, now_s)
        self._after_first_token(state, now_s)

    def _after_first_token(self, state: RequestState, now_s: float) -> None:
        remaining_tokens = state.request.max_new_tokens - 1
        reason = self._stop_reason(state) or (length_finish(1) if remaining_tokens == 0 else None)
        if reason is not None:
            self._finish(state, reason, now_s, (state.output_ids[-1],))
            return
        assert self.decode is not None
        self._push(state, (state.output_ids[-1],), None, now_s)
        state.stage = Stage.DECODE
        self.decode.enqueue(
            DecodeJob(state.key, state.request.prompt_tokens, remaining_tokens, now_s)
        )
        self._work_arrived(now_s)

    def release(self, state: RequestState) -> None:
        """The HTTP side is done with ``state``; an unfinished request is cancelled."""
        if not state.done:
            self._drop(state, "was cancelled")
            state.stage = Stage.DONE
            self.metrics.aborted_requests_total += 1
        self._requests.pop(state.key, None)
        if self._work is not None:  # a running iteration's energy goes to those still in it
            self._work.pop(state.key, None)
        self.ledger.release(state.key)

    def abort_by_rid(self, rid: str, message: str) -> int:
        """Abort unfinished requests with ``rid``; returns how many."""
        matching = [s for s in self._requests.values() if s.request.rid == rid and not s.done]
        for state in matching:
            self._abort(state, message)
        return len(matching)

    def abort_all(self, message: str) -> int:
        unfinished = [state for state in self._requests.values() if not state.done]
        for state in unfinished:
            self._abort(state, message)
        return len(unfinished)

    def _abort(self, state: RequestState, message: str) -> None:
        self._drop(state, f"was aborted: {message}")
        self.metrics.aborted_requests_total += 1
        state.stage = Stage.DONE
        state.finish_reason = abort_finish(message)
        state.finished_s = self._clock()
        state.events.put_nowait(Progress((), state.finish_reason, state.finished_s))

    def _drop(self, state: RequestState, reason: str) -> None:
        """Take an unfinished request out of whatever holds it."""
        if state.stage is Stage.PREFILL and self.prefill is not None:
            running = self.prefill.running
            if running is not None and any(job.key == state.key for job, _ in running.chunks):
                self._cancel_after_prefill.add(state.key)
            else:
                self.prefill.cancel(state.key)
            if self.kv_outbox is not None and state.request.bootstrap is not None:
                self.kv_outbox.abort(state.request.bootstrap.room, reason)
        elif state.stage is Stage.DECODE and self.decode is not None:
            self.decode.cancel(state.key)
            goes_on = self._decode_batch_goes_on()
            for gpu in self._simulated_gpus:  # the batch ran on until now (a late loop)
                gpu.settle_likely(goes_on)
        if state.kv_wait is not None and not state.kv_wait.done():
            state.kv_wait.cancel()
        self._wake.set()

    # ---- events ----------------------------------------------------------------------------
    def _push(
        self,
        state: RequestState,
        new_ids: tuple[int, ...],
        finish_reason: FinishReason | None,
        at_s: float,
    ) -> None:
        state.events.put_nowait(Progress(new_ids, finish_reason, at_s))

    def _emit_first_token(self, state: RequestState, token_id: int, at_s: float) -> None:
        state.output_ids.append(token_id)
        state.first_token_s = state.last_token_s = at_s
        ttft_s = at_s - state.arrival_s
        self.metrics.ttft.observe(ttft_s)
        self._observer.note_first_token(at_s, ttft_s)
        self.metrics.generation_tokens_total += 1
        self._generated_window.add(at_s, 1.0)

    def _stop_reason(self, state: RequestState) -> FinishReason | None:
        """The stop string or token id its newest token completed, if any."""
        return check_stop(state.request.stop, state.output_ids, self.tokenizer)

    def _finish(
        self, state: RequestState, reason: FinishReason, at_s: float, new_ids: tuple[int, ...]
    ) -> None:
        state.stage = Stage.DONE
        state.finish_reason = reason
        state.finished_s = at_s
        self.metrics.e2e.observe(at_s - state.arrival_s)
        self.metrics.requests_total += 1
        self._push(state, new_ids, reason, at_s)

    # ---- the iteration loop ----------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            iteration = self._start_iteration()
            if iteration is None:
                self._set_idle_power()
                self._last_end_s = None
                # Nothing else runs between the check above and clear(): no lost wake-ups.
                self._wake.clear()
                await self._wake.wait()
                continue
            self._meter_energy()  # the stretch since the last boundary (idle, here)
            self._work = iteration.work
            self._running = iteration
            # The GPU draws the iteration's power over exactly its simulated span: from its
            # start (back to back with the previous one, which the loop noticed late) to its
            # end (scheduled, as the loop will notice that late too).
            self._draw_during(iteration, iteration.power_w, iteration.started_s)
            iteration = await self._run_iteration(iteration)
            self._running = None
            try:
                self._finish_iteration(iteration)
            except Exception:  # a bug must not silently stop the engine without a trace
                logger.exception("engine loop: finishing a %s iteration failed", iteration.kind)
                raise

    def _work_arrived(self, now_s: float) -> None:
        """Wake the loop; an idle engine starts on new work the moment it arrives."""
        self._work_arrived_s = now_s
        self._wake.set()

    async def _run_iteration(self, iteration: _Iteration) -> _Iteration:
        """Wait until the iteration ends, re-pacing its remainder whenever the GPU's clock
        changes meanwhile (checked every few wall milliseconds), as the offline simulator does;
        returns it as it ended."""
        while True:
            remaining_s = iteration.end_s - self._clock()
            # Always yield once: what the last iteration produced goes out before the next.
            await asyncio.sleep(max(0.0, min(remaining_s / self._speedup, _REPACE_CHECK_WALL_S)))
            if iteration.end_s <= self._clock():
                return iteration
            clock_mhz = self._read_sm_clock_mhz()
            if clock_mhz == iteration.sm_clock_mhz or iteration.estimate_at is None:
                continue
            now_s = self._clock()
            before = iteration.estimate_at(iteration.sm_clock_mhz)
            after = iteration.estimate_at(clock_mhz)
            left_s = max(0.0, iteration.end_s - now_s) * after.latency_s / before.latency_s
            self._meter_energy()  # what ran at the old clock, at the old power
            iteration = replace(
                iteration,
                latency_s=now_s - iteration.started_s + left_s,
                power_w=after.power_w,
                sm_clock_mhz=clock_mhz,
            )
            self._running = iteration
            self._draw_during(iteration, after.power_w, now_s)

    def _start_iteration(self) -> _Iteration | None:
        start_s, stalled_s = self._start_time_s(self._clock())
        self._work_arrived_s = None
        iteration = self._iteration_at(start_s)
        if iteration is not None:
            self.metrics.host_stall_s_total += stalled_s
        return iteration

    def _start_time_s(self, now_s: float) -> tuple[float, float]:
        """When the next iteration starts (simulated s), and how long the GPU sat idle with
        work waiting because the loop woke later than it may catch up (a stalled host)."""
        catch_up_s = self._catch_up_wall_s * self._speedup
        # The loop runs a little after the simulated moment it should (wake-up latency x
        # speedup): back to back with the previous iteration, or from the work's arrival.
        # Never before work that arrived after the previous iteration ended: that work joins
        # this iteration, and a start backdated past its arrival would end it before the
        # request's first token (a negative inter-token gap, a negative TTFT).
        if self._last_end_s is not None and now_s - self._last_end_s <= catch_up_s:
            arrived_s = self._work_arrived_s
            return max(self._last_end_s, arrived_s if arrived_s is not None else 0.0), 0.0
        if self._work_arrived_s is not None and now_s - self._work_arrived_s <= catch_up_s:
            return self._work_arrived_s, 0.0
        due_s = self._last_end_s if self._last_end_s is not None else self._work_arrived_s
        return now_s, 0.0 if due_s is None else now_s - due_s

    def _iteration_at(self, start_s: float) -> _Iteration | None:
        clock_mhz = self._read_sm_clock_mhz()
        # Prefill first, as SGLang's scheduler does when both have work.
        if self.prefill is not None and self.prefill.queue_len:
            prefill = self.prefill.start_iteration(start_s, clock_mhz)
            if prefill is not None:
                work = {job.key: float(tokens) for job, tokens in prefill.chunks}
                tokens, pairs = prefill.new_tokens, prefill.attention_pairs
                return _Iteration(
                    Phase.PREFILL,
                    start_s,
                    prefill.latency_s,
                    prefill.power_w,
                    work,
                    clock_mhz,
                    lambda clock: self.perf.prefill_iteration(tokens, clock, pairs),
                )
        if self.decode is not None:
            decode = self.decode.start_iteration(start_s, clock_mhz)
            if decode is not None:
                work = {job.key: 1.0 for job in self.decode.running_jobs()}
                batch, kv_tokens = decode.batch_size, decode.kv_tokens
                return _Iteration(
                    Phase.DECODE,
                    start_s,
                    decode.latency_s,
                    decode.power_w,
                    work,
                    clock_mhz,
                    lambda clock: self.perf.decode_iteration(batch, kv_tokens, clock),
                )
        return None

    def _finish_iteration(self, iteration: _Iteration) -> None:
        self._meter_energy()  # the iteration itself, before its requests may finish
        self._work = None
        end_s = iteration.end_s
        if iteration.kind is Phase.PREFILL:
            self._finish_prefill(end_s)
        else:
            self._finish_decode(end_s)
        self._last_end_s = end_s
        self._last_activity_s = end_s

    def _finish_prefill(self, end_s: float) -> None:
        assert self.prefill is not None and self.prefill.running is not None
        self.metrics.prompt_tokens_total += self.prefill.running.new_tokens
        finished = self.prefill.finish_iteration()
        for key in self._cancel_after_prefill:
            self.prefill.cancel(key)
        self._cancel_after_prefill.clear()
        for job in finished:
            state = self._requests.get(job.key)
            if state is None or state.done:
                continue
            state.prefill_job = None
            first_token_id = self.tokenizer.output_token_id(state.seed, 0)
            if self.mode is EngineMode.PREFILL:
                assert self.kv_outbox is not None and state.request.bootstrap is not None
                self.kv_outbox.publish(self._handoff(state, first_token_id))
            if state.request.max_new_tokens == 0:  # prefill only: the KV cache, no token
                self._finish(state, length_finish(0), end_s, ())
                continue
            self._emit_first_token(state, first_token_id, end_s)
            if self.mode is EngineMode.PREFILL:
                reason = self._stop_reason(state) or length_finish(1)
                self._finish(state, reason, end_s, (first_token_id,))
            else:
                self._after_first_token(state, end_s)

    def _handoff(self, state: RequestState, first_token_id: int) -> KvHandoff:
        assert state.request.bootstrap is not None
        # Each GPU of the TP group sends its shard over its own link, in parallel.
        kv_bytes = state.request.prompt_tokens * self.perf.model.kv_bytes_per_token_per_gpu
        transfer_s = kv_bytes / (self.perf.gpu.kv_transfer_gb_s * 1e9)
        return KvHandoff(
            room=state.request.bootstrap.room,
            prompt_tokens=state.request.prompt_tokens,
            first_token_id=first_token_id,
            kv_bytes=kv_bytes * self._tensor_parallel,
            transfer_s=transfer_s,
        )

    def _finish_decode(self, end_s: float) -> None:
        assert self.decode is not None
        batch = self.decode.running_jobs()
        finished_keys = {job.key for job in self.decode.finish_iteration()}
        intervals: Counter[float] = Counter()
        for job in batch:
            state = self._requests.get(job.key)
            if state is None or state.done:
                continue
            token_id = self.tokenizer.output_token_id(state.seed, len(state.output_ids))
            previous_s = state.last_token_s if state.last_token_s is not None else end_s
            intervals[end_s - previous_s] += 1
            state.output_ids.append(token_id)
            state.last_token_s = end_s
            reason = self._stop_reason(state)
            if reason is not None and job.key not in finished_keys:
                self.decode.cancel(job.key)  # stopped early: its KV is freed now
            if reason is None and job.key in finished_keys:
                reason = length_finish(state.request.max_new_tokens)
            if reason is not None:
                self._finish(state, reason, end_s, (token_id,))
            else:
                self._push(state, (token_id,), None, end_s)
        for interval_s, count in intervals.items():
            self.metrics.itl.observe(interval_s, count)
            self._observer.note_decode_step(end_s, interval_s, count)
        self.metrics.generation_tokens_total += len(batch)
        self._generated_window.add(end_s, float(len(batch)))

    # ---- energy per request ----------------------------------------------------------------
    def _meter_energy(self) -> None:
        """Charge the GPU energy used since the last reading to the work running meanwhile."""
        try:
            energy_j = self._group_energy_j()
        except GpuError as exc:  # no counter: nothing to attribute
            if not self._energy_error_logged:
                logger.warning("reading the GPU energy counter failed (%s)", exc)
                self._energy_error_logged = True
            return
        if self._energy_seen_j is not None:
            self.ledger.charge(energy_j - self._energy_seen_j, self._work)
        self._energy_seen_j = energy_j

    def request_energy(self, state: RequestState) -> RequestEnergy:
        """The energy attributed to ``state`` on this engine so far."""
        return self.ledger.energy_of(state.key)

    # ---- the GPU ---------------------------------------------------------------------------
    def _read_sm_clock_mhz(self) -> int:
        """The clock the instance runs at: its slowest GPU's (TP ranks wait for each other)."""
        try:
            self._sm_clock_mhz = min(gpu.sm_clock_mhz() for gpu in self.gpus)
        except GpuError as exc:  # keep running at the last known clock
            if not self._clock_error_logged:
                logger.warning(
                    "reading the SM clock failed (%s); using %d MHz", exc, self._sm_clock_mhz
                )
                self._clock_error_logged = True
        return self._sm_clock_mhz

    @property
    def _simulated_gpus(self) -> list[SimulatedGpu]:
        # Only a simulated GPU's draw follows the engine; a real one measures itself. Every
        # rank of a TP group does the same work, so each draws the per-GPU power.
        return [gpu for gpu in self.gpus if isinstance(gpu, SimulatedGpu)]

    def _set_power_source(self, power_source: Callable[[int], float]) -> None:
        for gpu in self._simulated_gpus:
            gpu.set_power_source(power_source)

    def _set_idle_power(self) -> None:
        self._set_power_source(self.perf.idle_power_w)

    def _draw_during(self, iteration: _Iteration, power_w: float, start_s: float) -> None:
        """Every GPU draws ``power_w`` over [start_s, the iteration's end] (simulated), then
        idles unless the loop starts the next iteration; while a decode batch goes on, its
        draw is the likely one after the end (readings before the late loop starts the next
        iteration count it, see SimulatedGpu)."""
        source = _constant_power(power_w)
        goes_on = iteration.kind is Phase.DECODE and self._decode_batch_goes_on()
        likely_after = source if goes_on else None
        for gpu in self._simulated_gpus:
            gpu.draw_during(source, start_s, iteration.end_s, self.perf.idle_power_w, likely_after)

    def _decode_batch_goes_on(self) -> bool:
        """Whether a request of the decode batch still decodes after the current iteration."""
        if self.decode is None:
            return False
        step = self.decode.iterations_done  # the running iteration's index
        return any(job.finish_iteration > step for job in self.decode.running_jobs())

    def _group_power_w(self) -> float:
        return sum(gpu.power_w() for gpu in self.gpus) * self._rank_scale

    def _group_energy_j(self) -> float:
        return sum(gpu.energy_j() for gpu in self.gpus) * self._rank_scale

    # ---- observation -----------------------------------------------------------------------
    @property
    def sm_clock_mhz(self) -> int:
        """The instance's SM clock now (its slowest GPU's)."""
        return self._read_sm_clock_mhz()

    @property
    def _rank_scale(self) -> float:
        return max(1.0, self._tensor_parallel / len(self.gpus))

    @property
    def running_prefill_requests(self) -> int:
        running = self.prefill.running if self.prefill is not None else None
        return len(running.chunks) if running is not None else 0

    @property
    def running_requests(self) -> int:
        decode_batch = self.decode.batch_size if self.decode is not None else 0
        return decode_batch + self.running_prefill_requests

    @property
    def waiting_requests(self) -> int:
        """Requests waiting for a batch (a partly prefilled prompt counts until its last chunk)."""
        prefill_waiting = self.prefill.waiting_len if self.prefill is not None else 0
        return prefill_waiting + (self.decode.queue_len if self.decode is not None else 0)

    @property
    def kv_wait_requests(self) -> int:
        return sum(1 for state in self._requests.values() if state.stage is Stage.KV_WAIT)

    @property
    def kv_tokens_used(self) -> int:
        decode_tokens = self.decode.kv_tokens_used if self.decode is not None else 0
        # Partly prefilled prompts hold KV too (chunked prefill).
        prefill_tokens = sum(
            state.prefill_job.done_tokens
            for state in self._requests.values()
            if state.prefill_job is not None and not state.done
        )
        return decode_tokens + prefill_tokens

    def gen_throughput_tps(self, now_s: float) -> float:
        return self._generated_window.total(now_s) / self._window_span_s(now_s)

    def _window_span_s(self, now_s: float) -> float:
        return max(1e-9, min(self._generated_window.window_s, now_s - self._started_s))

    def gauges(self) -> EngineGauges:
        """The load this engine reports (SGLang's gauges), as the simulator's schedulers give
        it; a null-mode (colocated) instance reports both sides, as the simulator's colocated
        instance does (``unified_gauges``)."""
        now_s = self._clock()
        prefill, decode = self.prefill, self.decode
        if decode is None:
            assert prefill is not None
            return prefill_gauges(prefill, now_s, self.kv_capacity_tokens)
        if prefill is None:
            return decode_gauges(decode, now_s)
        return unified_gauges(prefill, decode, now_s)

    def instance_state(self, instance_id: str) -> InstanceState:
        """This instance now, through the observation contract (as the offline simulator)."""
        now_s = self._clock()
        return self._observer.observe(
            instance_id,
            now_s,
            self.gauges(),
            sm_clock_mhz=self._read_sm_clock_mhz(),
            # Power and energy of the whole instance; with fewer GPUs than TP ranks (one
            # standing for every rank) theirs are scaled up to the group.
            power_w=self._group_power_w(),
            energy_j=self._group_energy_j(),
            last_activity_s=self._last_activity_s,
        )
