"""SGLang-like per-instance schedulers, free of time sources and I/O.

The offline simulator drives them in virtual time and the simulated engine drives them in real
time; both ask ``start_iteration`` for the next batch, wait ``latency_s`` their own way, then call
``finish_iteration``. Keeping the batching rules here means both behave identically.
"""

from __future__ import annotations

from collections import deque
from collections.abc import KeysView
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

from voltana.observation.observer import EngineGauges
from voltana.perf.model import PerformanceModel

KeyT = TypeVar("KeyT")


@dataclass(slots=True)
class PrefillJob(Generic[KeyT]):
    key: KeyT
    input_tokens: int
    enqueued_s: float
    done_tokens: int = 0

    @property
    def remaining_tokens(self) -> int:
        return self.input_tokens - self.done_tokens


@dataclass(frozen=True, slots=True)
class PrefillIteration(Generic[KeyT]):
    started_s: float
    latency_s: float
    power_w: float
    sm_clock_mhz: int
    new_tokens: int
    attention_pairs: float
    # (job, tokens of this job run in this iteration)
    chunks: tuple[tuple[PrefillJob[KeyT], int], ...]


class PrefillScheduler(Generic[KeyT]):
    """FCFS prefill with a per-iteration token budget (chunked prefill, as SGLang does)."""

    def __init__(
        self,
        perf: PerformanceModel,
        token_budget: int = 8192,
        max_requests_per_batch: int = 64,
    ) -> None:
        self.perf = perf
        self.token_budget = token_budget
        self.max_requests_per_batch = max_requests_per_batch
        self._queue: deque[PrefillJob[KeyT]] = deque()
        self._queued_tokens = 0
        self.running: PrefillIteration[KeyT] | None = None

    # ---- observation ------------------------------------------------------------------
    @property
    def queue_len(self) -> int:
        return len(self._queue)

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    def oldest_enqueued_s(self) -> float | None:
        return self._queue[0].enqueued_s if self._queue else None

    @property
    def is_busy(self) -> bool:
        return self.running is not None

    @property
    def waiting_len(self) -> int:
        """Requests with prompt tokens not in the running iteration (SGLang's queue length)."""
        if self.running is None:
            return len(self._queue)
        last_job, last_tokens = self.running.chunks[-1]
        partly_running = 1 if last_job.remaining_tokens > last_tokens else 0
        return len(self._queue) - len(self.running.chunks) + partly_running

    @property
    def waiting_tokens(self) -> int:
        """Prompt tokens not yet prefilled and not in the running iteration."""
        running_tokens = self.running.new_tokens if self.running else 0
        return self._queued_tokens - running_tokens

    def oldest_waiting_enqueued_s(self) -> float | None:
        """Arrival of the oldest request none of whose tokens are running now."""
        skip = len(self.running.chunks) if self.running else 0
        if skip and self.waiting_len:
            # The last running job still has tokens left: it is the oldest waiter.
            last_job, last_tokens = self.running.chunks[-1]  # type: ignore[union-attr]
            if last_job.remaining_tokens > last_tokens:
                return last_job.enqueued_s
        return self._queue[skip].enqueued_s if len(self._queue) > skip else None

    # ---- transitions ----------------------------------------------------------------------
    def enqueue(self, job: PrefillJob[KeyT]) -> None:
        self._queue.append(job)
        self._queued_tokens += job.remaining_tokens

    def start_iteration(self, now_s: float, sm_clock_mhz: int) -> PrefillIteration[KeyT] | None:
        if self.running is not None:
            raise RuntimeError("prefill iteration already running")
        if not self._queue:
            return None
        budget = self.token_budget
        chunks: list[tuple[PrefillJob[KeyT], int]] = []
        attention_pairs = 0.0
        for job in self._queue:
            if budget <= 0 or len(chunks) >= self.max_requests_per_batch:
                break
            tokens = min(job.remaining_tokens, budget)
            chunks.append((job, tokens))
            # Causal attention: each new token attends to the done prefix and half the chunk.
            attention_pairs += tokens * (job.done_tokens + tokens / 2.0)
            budget -= tokens
        new_tokens = self.token_budget - budget
        estimate = self.perf.prefill_iteration(new_tokens, sm_clock_mhz, attention_pairs)
        self.running = PrefillIteration(
            now_s,
            estimate.latency_s,
            estimate.power_w,
            sm_clock_mhz,
            new_tokens,
            attention_pairs,
            tuple(chunks),
        )
        return self.running

    def finish_iteration(self) -> list[PrefillJob[KeyT]]:
        """Apply the running iteration; returns the jobs whose whole prompt is now prefilled."""
        iteration = self.running
        if iteration is None:
            raise RuntimeError("no prefill iteration running")
        self.running = None
        finished: list[PrefillJob[KeyT]] = []
        for job, tokens in iteration.chunks:
            job.done_tokens += tokens
            self._queued_tokens -= tokens
            if job.remaining_tokens <= 0:
                finished.append(job)
        # Finished jobs are always a prefix of the FCFS queue.
        for _ in finished:
            self._queue.popleft()
        return finished

    def cancel(self, key: KeyT) -> bool:
        """Drop a waiting job (not one inside the running iteration)."""
        running_keys = {job.key for job, _ in self.running.chunks} if self.running else set()
        for job in self._queue:
            if job.key == key and key not in running_keys:
                self._queue.remove(job)
                self._queued_tokens -= job.remaining_tokens
                return True
        return False


@dataclass(slots=True)
class DecodeJob(Generic[KeyT]):
    key: KeyT
    input_tokens: int
    output_tokens: int  # tokens still to generate by decode (the first came from prefill)
    enqueued_s: float
    # Set when admitted to the running batch.
    admitted_iteration: int = -1
    finish_iteration: int = -1

    @property
    def reserved_kv_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + 1


class DecodeIteration(NamedTuple):
    """One decode step (a named tuple: one is built per step, several times cheaper than a
    frozen dataclass)."""

    index: int  # type: ignore[assignment]  # (shadows tuple.index, which nothing here calls)
    started_s: float
    latency_s: float
    power_w: float
    sm_clock_mhz: int
    batch_size: int
    kv_tokens: int


@dataclass
class DecodeScheduler(Generic[KeyT]):
    """Continuous batching bounded by running requests and KV capacity.

    A job is admitted only when its whole KV footprint (prompt + all output) fits, so a running
    request is never retracted; jobs that do not fit wait in FCFS order. Each iteration produces
    one token for every running job; a job admitted at iteration ``k`` with ``n`` tokens to go
    finishes at iteration ``k + n - 1``, so per-iteration work does not touch every job.
    """

    perf: PerformanceModel
    max_running_requests: int = 1024
    kv_capacity_tokens: int = 0
    _waiting: deque[DecodeJob[KeyT]] = field(default_factory=deque)
    _finishing: dict[int, list[DecodeJob[KeyT]]] = field(default_factory=dict)
    _running: dict[KeyT, DecodeJob[KeyT]] = field(default_factory=dict)
    _reserved_kv_tokens: int = 0
    # KV tokens actually held: prompts + tokens generated so far.
    kv_tokens_used: int = 0
    iterations_done: int = 0
    running_iteration: DecodeIteration | None = None
    last_admitted: list[DecodeJob[KeyT]] = field(default_factory=list)
    # Bumped whenever a job joins or leaves the running batch: a caller keeping something
    # derived from the batch (the simulator's energy shares) rebuilds it only then.
    batch_version: int = 0

    def __post_init__(self) -> None:
        if self.kv_capacity_tokens <= 0:
            self.kv_capacity_tokens = self.perf.kv_capacity_tokens()

    # ---- observation ------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return len(self._running)

    @property
    def queue_len(self) -> int:
        return len(self._waiting)

    @property
    def is_busy(self) -> bool:
        return self.running_iteration is not None

    def oldest_enqueued_s(self) -> float | None:
        return self._waiting[0].enqueued_s if self._waiting else None

    def running_jobs(self) -> list[DecodeJob[KeyT]]:
        return list(self._running.values())

    def running_keys(self) -> KeysView[KeyT]:
        """The running jobs' keys, in admission order (a live view: no copy)."""
        return self._running.keys()

    def remaining_output_tokens(self) -> int:
        done = self.iterations_done
        return sum(job.finish_iteration - done + 1 for job in self._running.values())

    def fits_ever(self, input_tokens: int, output_tokens: int) -> bool:
        return input_tokens + output_tokens + 1 <= self.kv_capacity_tokens

    # ---- transitions ----------------------------------------------------------------------
    def enqueue(self, job: DecodeJob[KeyT]) -> None:
        self._waiting.append(job)

    def _admit_waiting(self) -> list[DecodeJob[KeyT]]:
        admitted: list[DecodeJob[KeyT]] = []
        while self._waiting and len(self._running) < self.max_running_requests:
            job = self._waiting[0]
            if self._reserved_kv_tokens + job.reserved_kv_tokens > self.kv_capacity_tokens:
                break
            self._waiting.popleft()
            self._reserved_kv_tokens += job.reserved_kv_tokens
            self.kv_tokens_used += job.input_tokens + 1
            job.admitted_iteration = self.iterations_done
            job.finish_iteration = self.iterations_done + max(1, job.output_tokens) - 1
            self._running[job.key] = job
            self._finishing.setdefault(job.finish_iteration, []).append(job)
            admitted.append(job)
        if admitted:
            self.batch_version += 1
        return admitted

    def start_iteration(self, now_s: float, sm_clock_mhz: int) -> DecodeIteration | None:
        """Admit what fits, then start one step. Jobs admitted now are in ``last_admitted``:
        their first token (computed by prefill) is emitted at this moment."""
        if self.running_iteration is not None:
            raise RuntimeError("decode iteration already running")
        self.last_admitted = self._admit_waiting() if self._waiting else []
        if not self._running:
            return None
        batch = len(self._running)
        estimate = self.perf.decode_iteration(batch, self.kv_tokens_used, sm_clock_mhz)
        self.running_iteration = DecodeIteration(
            self.iterations_done,
            now_s,
            estimate.latency_s,
            estimate.power_w,
            sm_clock_mhz,
            batch,
            self.kv_tokens_used,
        )
        return self.running_iteration

    def finish_iteration(self) -> list[DecodeJob[KeyT]]:
        """Every running job got one token; returns the jobs that are now complete."""
        iteration = self.running_iteration
        if iteration is None:
            raise RuntimeError("no decode iteration running")
        self.running_iteration = None
        # One token for each job still running: the batch minus any job cancelled meanwhile
        # (jobs are only admitted in start_iteration, so nothing joined since it started).
        self.kv_tokens_used += len(self._running)
        finished = self._finishing.pop(self.iterations_done, [])
        if finished:
            self.batch_version += 1
        for job in finished:
            del self._running[job.key]
            self._reserved_kv_tokens -= job.reserved_kv_tokens
            generated = self.iterations_done - job.admitted_iteration + 1
            self.kv_tokens_used -= job.input_tokens + 1 + generated
        self.iterations_done += 1
        return finished

    def cancel(self, key: KeyT) -> bool:
        """Remove a waiting or running job (a cancelled request frees its KV at once)."""
        for job in self._waiting:
            if job.key == key:
                self._waiting.remove(job)
                return True
        job_or_none = self._running.pop(key, None)
        if job_or_none is None:
            return False
        job = job_or_none
        self.batch_version += 1
        self._finishing[job.finish_iteration].remove(job)
        self._reserved_kv_tokens -= job.reserved_kv_tokens
        # Tokens of finished iterations only: the token a running iteration is computing for
        # this job was never counted, and finish_iteration counts only jobs still running.
        generated = self.iterations_done - job.admitted_iteration
        self.kv_tokens_used -= job.input_tokens + 1 + generated
        return True


def prefill_gauges(
    scheduler: PrefillScheduler[KeyT], now_s: float, kv_tokens_capacity: int = 0
) -> EngineGauges:
    """A prefill engine's load report (SGLang's queue and running gauges, its KV capacity and
    its batch limit)."""
    oldest = scheduler.oldest_waiting_enqueued_s()
    running = scheduler.running
    return EngineGauges(
        queue_len=scheduler.waiting_len,
        queued_tokens=scheduler.waiting_tokens,
        oldest_wait_ms=(now_s - oldest) * 1e3 if oldest is not None else 0.0,
        running_prefill_tokens=running.new_tokens if running else 0,
        kv_tokens_capacity=kv_tokens_capacity,
        max_running_requests=scheduler.max_requests_per_batch,
    )


def decode_gauges(scheduler: DecodeScheduler[KeyT], now_s: float) -> EngineGauges:
    """A decode engine's load report: admission queue, running batch, KV in use and limits."""
    oldest = scheduler.oldest_enqueued_s()
    return EngineGauges(
        queue_len=scheduler.queue_len,
        oldest_wait_ms=(now_s - oldest) * 1e3 if oldest is not None else 0.0,
        running_batch=scheduler.batch_size,
        kv_tokens_used=scheduler.kv_tokens_used,
        kv_tokens_capacity=scheduler.kv_capacity_tokens,
        max_running_requests=scheduler.max_running_requests,
    )


def unified_gauges(
    prefill: PrefillScheduler[KeyT], decode: DecodeScheduler[KeyT], now_s: float
) -> EngineGauges:
    """A colocated engine's load report (SGLang without disaggregation): its waiting queue
    (prompts not yet prefilled, and any prefilled request still waiting for KV room), the
    prompt tokens waiting and running, the running decode batch and its KV."""
    oldest = prefill.oldest_waiting_enqueued_s()
    if oldest is None:
        oldest = decode.oldest_enqueued_s()
    running = prefill.running
    return EngineGauges(
        queue_len=prefill.waiting_len + decode.queue_len,
        queued_tokens=prefill.waiting_tokens,
        oldest_wait_ms=(now_s - oldest) * 1e3 if oldest is not None else 0.0,
        running_prefill_tokens=running.new_tokens if running else 0,
        running_batch=decode.batch_size,
        kv_tokens_used=decode.kv_tokens_used,
        kv_tokens_capacity=decode.kv_capacity_tokens,
        max_running_requests=decode.max_running_requests,
    )
