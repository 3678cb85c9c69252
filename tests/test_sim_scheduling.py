"""PrefillScheduler and DecodeScheduler: batching rules, KV accounting, cancellation."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from voltana.batching.scheduling import DecodeJob, DecodeScheduler, PrefillJob, PrefillScheduler
from voltana.hardware import GpuSpec, ModelSpec, get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.perf.model import IterationEstimate

pytestmark = pytest.mark.unit


@dataclass
class RecordingPerf:
    """A PerformanceModel with simple linear costs that records what it was asked."""

    gpu: GpuSpec = field(default_factory=lambda: get_gpu("a100-80g"))
    model: ModelSpec = field(default_factory=lambda: get_model("llama-3.1-8b"))
    kv_tokens: int = 100_000
    prefill_calls: list[tuple[int, int, float | None]] = field(default_factory=list)
    decode_calls: list[tuple[int, int, int]] = field(default_factory=list)

    def prefill_iteration(
        self, new_tokens: int, sm_clock_mhz: float, attention_pairs: float | None = None
    ) -> IterationEstimate:
        self.prefill_calls.append((new_tokens, int(sm_clock_mhz), attention_pairs))
        return IterationEstimate(0.001 * new_tokens, 300.0)

    def decode_iteration(
        self, batch_size: int, kv_tokens: int, sm_clock_mhz: float
    ) -> IterationEstimate:
        self.decode_calls.append((batch_size, kv_tokens, int(sm_clock_mhz)))
        return IterationEstimate(0.01 + 0.0001 * batch_size, 250.0)

    def idle_power_w(self, sm_clock_mhz: float) -> float:
        return 90.0

    def kv_capacity_tokens(self) -> int:
        return self.kv_tokens


# ---- prefill ----------------------------------------------------------------------------------


def prefill(budget: int = 1000, max_requests: int = 64) -> PrefillScheduler[str]:
    return PrefillScheduler(
        RecordingPerf(), token_budget=budget, max_requests_per_batch=max_requests
    )


def test_prefill_idle_scheduler_starts_nothing() -> None:
    scheduler = prefill()
    assert scheduler.start_iteration(0.0, 1410) is None
    assert not scheduler.is_busy


def test_prefill_batches_fcfs_within_the_token_budget() -> None:
    scheduler = prefill(budget=1000)
    for key, tokens in (("a", 300), ("b", 400), ("c", 500)):
        scheduler.enqueue(PrefillJob(key, tokens, enqueued_s=0.0))
    assert scheduler.queued_tokens == 1200
    iteration = scheduler.start_iteration(1.0, 1410)
    assert iteration is not None
    assert [(job.key, tokens) for job, tokens in iteration.chunks] == [
        ("a", 300),
        ("b", 400),
        ("c", 300),  # the budget's remainder: c is chunked
    ]
    assert iteration.new_tokens == 1000
    assert iteration.started_s == 1.0
    assert iteration.sm_clock_mhz == 1410
    assert iteration.latency_s == pytest.approx(1.0)
    finished = scheduler.finish_iteration()
    assert [job.key for job in finished] == ["a", "b"]
    assert scheduler.queue_len == 1
    assert scheduler.queued_tokens == 200
    second = scheduler.start_iteration(2.0, 1005)
    assert second is not None
    assert [(job.key, tokens) for job, tokens in second.chunks] == [("c", 200)]
    assert [job.key for job in scheduler.finish_iteration()] == ["c"]
    assert scheduler.queue_len == 0
    assert scheduler.queued_tokens == 0


def test_prefill_chunks_a_prompt_larger_than_the_budget() -> None:
    perf = RecordingPerf()
    scheduler: PrefillScheduler[str] = PrefillScheduler(perf, token_budget=1024)
    scheduler.enqueue(PrefillJob("long", 2500, enqueued_s=0.0))
    chunks = []
    while True:
        iteration = scheduler.start_iteration(0.0, 1410)
        if iteration is None:
            break
        chunks.append(iteration.new_tokens)
        finished = scheduler.finish_iteration()
        assert bool(finished) == (sum(chunks) == 2500), "finished only with its last chunk"
    assert chunks == [1024, 1024, 452]
    # Causal attention pairs: each chunk attends to the done prefix and half of itself; the
    # chunks together cost exactly what one 2500-token pass would (2500^2 / 2).
    pairs = [call[2] for call in perf.prefill_calls]
    assert pairs == [1024 * 512.0, 1024 * (1024 + 512.0), 452 * (2048 + 226.0)]
    assert sum(p for p in pairs if p is not None) == pytest.approx(2500**2 / 2)


def test_prefill_respects_the_request_limit_per_batch() -> None:
    scheduler = prefill(budget=10_000, max_requests=2)
    for key in "abc":
        scheduler.enqueue(PrefillJob(key, 10, enqueued_s=0.0))
    iteration = scheduler.start_iteration(0.0, 1410)
    assert iteration is not None
    assert [job.key for job, _ in iteration.chunks] == ["a", "b"]


def test_prefill_refuses_two_running_iterations_and_finishing_none() -> None:
    scheduler = prefill()
    with pytest.raises(RuntimeError):
        scheduler.finish_iteration()
    scheduler.enqueue(PrefillJob("a", 10, enqueued_s=0.0))
    scheduler.start_iteration(0.0, 1410)
    with pytest.raises(RuntimeError):
        scheduler.start_iteration(0.0, 1410)


def test_prefill_cancel_drops_a_waiting_job_but_not_a_running_one() -> None:
    scheduler = prefill(budget=100)
    scheduler.enqueue(PrefillJob("a", 80, enqueued_s=0.0))
    scheduler.enqueue(PrefillJob("b", 50, enqueued_s=0.5))
    scheduler.enqueue(PrefillJob("c", 70, enqueued_s=0.7))
    scheduler.start_iteration(1.0, 1410)  # a (80) + 20 tokens of b
    assert not scheduler.cancel("a")
    assert not scheduler.cancel("b")
    assert scheduler.cancel("c")
    assert not scheduler.cancel("c")
    assert not scheduler.cancel("unknown")
    assert scheduler.queued_tokens == 130
    scheduler.finish_iteration()
    assert scheduler.queued_tokens == 30
    assert scheduler.oldest_enqueued_s() == 0.5
    # b is partly done and no longer running: cancelling frees its remaining tokens.
    assert scheduler.cancel("b")
    assert scheduler.queued_tokens == 0
    assert scheduler.queue_len == 0
    assert scheduler.oldest_enqueued_s() is None


def test_prefill_oldest_enqueued_is_the_fcfs_head() -> None:
    scheduler = prefill()
    assert scheduler.oldest_enqueued_s() is None
    scheduler.enqueue(PrefillJob("a", 10, enqueued_s=3.0))
    scheduler.enqueue(PrefillJob("b", 10, enqueued_s=4.0))
    assert scheduler.oldest_enqueued_s() == 3.0


def test_prefill_waiting_counts_exclude_the_running_iteration() -> None:
    scheduler = prefill(budget=100)
    scheduler.enqueue(PrefillJob("a", 80, enqueued_s=0.0))
    scheduler.enqueue(PrefillJob("b", 50, enqueued_s=0.5))
    scheduler.enqueue(PrefillJob("c", 70, enqueued_s=0.7))
    assert (scheduler.waiting_len, scheduler.waiting_tokens) == (3, 200)
    assert scheduler.oldest_waiting_enqueued_s() == 0.0
    scheduler.start_iteration(1.0, 1410)  # a whole, b partly
    # b still has 30 tokens not in the running batch, so it still waits, as does c.
    assert (scheduler.waiting_len, scheduler.waiting_tokens) == (2, 100)
    assert scheduler.oldest_waiting_enqueued_s() == 0.5
    scheduler.finish_iteration()
    scheduler.start_iteration(2.0, 1410)  # b's rest + all of c
    assert (scheduler.waiting_len, scheduler.waiting_tokens) == (0, 0)
    assert scheduler.oldest_waiting_enqueued_s() is None


def test_prefill_uses_the_real_model_latency() -> None:
    perf = AnalyticalPerformanceModel.for_hardware(get_gpu("a100-80g"), get_model("llama-3.1-8b"))
    scheduler: PrefillScheduler[int] = PrefillScheduler(perf)
    scheduler.enqueue(PrefillJob(0, 2048, enqueued_s=0.0))
    iteration = scheduler.start_iteration(0.0, 1005)
    assert iteration is not None
    expected = perf.prefill_iteration(2048, 1005)
    assert iteration.latency_s == pytest.approx(expected.latency_s)
    assert iteration.power_w == pytest.approx(expected.power_w)


# ---- decode -----------------------------------------------------------------------------------


def decode(
    kv_capacity: int = 100_000, max_running: int = 256, perf: RecordingPerf | None = None
) -> DecodeScheduler[str]:
    return DecodeScheduler(
        perf or RecordingPerf(), max_running_requests=max_running, kv_capacity_tokens=kv_capacity
    )


def run_to_completion(scheduler: DecodeScheduler[str], limit: int = 10_000) -> dict[str, int]:
    """Iterate until idle; returns each job's finishing iteration index."""
    finished_at: dict[str, int] = {}
    for _ in range(limit):
        iteration = scheduler.start_iteration(0.0, 1410)
        if iteration is None:
            return finished_at
        for job in scheduler.finish_iteration():
            finished_at[job.key] = iteration.index
    raise AssertionError("decode did not drain")


def test_decode_capacity_defaults_to_the_performance_model() -> None:
    assert DecodeScheduler(RecordingPerf(kv_tokens=1234)).kv_capacity_tokens == 1234


def test_decode_each_iteration_gives_every_running_job_one_token() -> None:
    perf = RecordingPerf()
    scheduler = decode(perf=perf)
    scheduler.enqueue(DecodeJob("a", input_tokens=100, output_tokens=3, enqueued_s=0.0))
    scheduler.enqueue(DecodeJob("b", input_tokens=50, output_tokens=1, enqueued_s=0.0))
    finished_at = run_to_completion(scheduler)
    assert finished_at == {"b": 0, "a": 2}
    # KV held: prompt + first token at admission, plus one per job per iteration.
    assert perf.decode_calls == [(2, 152, 1410), (1, 102, 1410), (1, 103, 1410)]
    assert scheduler.kv_tokens_used == 0
    assert scheduler.batch_size == 0


def test_decode_admits_fcfs_up_to_max_running_requests() -> None:
    scheduler = decode(max_running=2)
    for key in "abc":
        scheduler.enqueue(DecodeJob(key, input_tokens=10, output_tokens=2, enqueued_s=0.0))
    scheduler.start_iteration(0.0, 1410)
    assert [job.key for job in scheduler.last_admitted] == ["a", "b"]
    assert scheduler.batch_size == 2
    assert scheduler.queue_len == 1
    scheduler.finish_iteration()
    scheduler.start_iteration(0.0, 1410)
    assert scheduler.last_admitted == []  # a and b still need one more token
    scheduler.finish_iteration()
    scheduler.start_iteration(0.0, 1410)
    assert [job.key for job in scheduler.last_admitted] == ["c"]


def test_decode_waits_when_kv_memory_is_full() -> None:
    # Each job reserves 1000 + 500 + 1 tokens: two do not fit in 3000.
    scheduler = decode(kv_capacity=3000)
    for key in "abc":
        scheduler.enqueue(DecodeJob(key, input_tokens=1000, output_tokens=500, enqueued_s=0.0))
    assert scheduler.fits_ever(1000, 500)
    assert not scheduler.fits_ever(2500, 500)
    batches = []
    admitted_order = []
    while True:
        iteration = scheduler.start_iteration(0.0, 1410)
        admitted_order += [job.key for job in scheduler.last_admitted]
        if iteration is None:
            break
        batches.append(iteration.batch_size)
        assert iteration.kv_tokens <= 3000
        scheduler.finish_iteration()
    assert max(batches) == 1
    assert len(batches) == 3 * 500
    assert admitted_order == ["a", "b", "c"]
    assert scheduler.kv_tokens_used == 0


def test_decode_head_of_line_job_blocks_later_smaller_ones() -> None:
    scheduler = decode(kv_capacity=3000)
    scheduler.enqueue(DecodeJob("a", input_tokens=1000, output_tokens=500, enqueued_s=0.0))
    scheduler.enqueue(DecodeJob("big", input_tokens=2000, output_tokens=100, enqueued_s=0.1))
    scheduler.enqueue(DecodeJob("small", input_tokens=10, output_tokens=10, enqueued_s=0.2))
    scheduler.start_iteration(0.0, 1410)
    assert [job.key for job in scheduler.last_admitted] == ["a"]
    assert scheduler.queue_len == 2
    assert scheduler.oldest_enqueued_s() == 0.1


def test_decode_kv_accounting_returns_to_zero_after_a_mixed_workload() -> None:
    scheduler = decode(kv_capacity=5000, max_running=3)
    lengths = [(300, 1), (200, 40), (1000, 7), (50, 300), (2000, 20), (10, 2), (700, 99)]
    for n, (prompt, output) in enumerate(lengths):
        scheduler.enqueue(DecodeJob(f"r{n}", prompt, output, enqueued_s=0.0))
    finished_at = run_to_completion(scheduler)
    assert sorted(finished_at) == sorted(f"r{n}" for n in range(len(lengths)))
    assert scheduler.kv_tokens_used == 0
    assert scheduler.remaining_output_tokens() == 0
    assert scheduler.queue_len == 0


def test_decode_remaining_output_tokens_counts_down() -> None:
    scheduler = decode()
    scheduler.enqueue(DecodeJob("a", 10, 5, enqueued_s=0.0))
    scheduler.enqueue(DecodeJob("b", 10, 2, enqueued_s=0.0))
    scheduler.start_iteration(0.0, 1410)
    assert scheduler.remaining_output_tokens() == 7
    scheduler.finish_iteration()
    assert scheduler.remaining_output_tokens() == 5


def test_decode_batch_version_moves_exactly_when_the_running_batch_changes() -> None:
    """Callers rebuild what they derive from the batch (the simulator's energy shares) only
    when the version moves, so it must move on every join, finish and cancel - and only then."""
    scheduler = decode(max_running=2)
    for key, tokens in (("a", 2), ("b", 4), ("c", 3)):
        scheduler.enqueue(DecodeJob(key, input_tokens=10, output_tokens=tokens, enqueued_s=0.0))
    versions = []
    batches = []
    while scheduler.start_iteration(0.0, 1410) is not None:
        versions.append(scheduler.batch_version)
        batches.append(tuple(scheduler.running_keys()))
        scheduler.finish_iteration()
    assert batches == [("a", "b"), ("a", "b"), ("b", "c"), ("b", "c"), ("c",)]
    for step in range(1, len(batches)):
        changed = batches[step] != batches[step - 1]
        assert (versions[step] != versions[step - 1]) == changed
    version = scheduler.batch_version
    scheduler.enqueue(DecodeJob("d", input_tokens=10, output_tokens=5, enqueued_s=0.0))
    assert scheduler.cancel("d") and scheduler.batch_version == version  # it never ran
    scheduler.enqueue(DecodeJob("e", input_tokens=10, output_tokens=5, enqueued_s=0.0))
    scheduler.start_iteration(0.0, 1410)
    version = scheduler.batch_version
    assert scheduler.cancel("e") and scheduler.batch_version == version + 1


def test_decode_cancel_waiting_and_running_jobs_frees_their_kv() -> None:
    scheduler = decode(kv_capacity=10_000)
    scheduler.enqueue(DecodeJob("run", 100, 10, enqueued_s=0.0))
    scheduler.enqueue(DecodeJob("stay", 200, 10, enqueued_s=0.0))
    scheduler.start_iteration(0.0, 1410)
    scheduler.finish_iteration()
    scheduler.enqueue(DecodeJob("wait", 300, 10, enqueued_s=1.0))
    assert scheduler.cancel("wait")
    assert scheduler.queue_len == 0
    held = scheduler.kv_tokens_used
    assert scheduler.cancel("run")  # between iterations: 100 prompt + 1 first + 1 generated
    assert scheduler.kv_tokens_used == held - 102
    assert not scheduler.cancel("run")
    assert not scheduler.cancel("unknown")
    finished_at = run_to_completion(scheduler)
    assert list(finished_at) == ["stay"]
    assert scheduler.kv_tokens_used == 0


def test_decode_cancel_during_a_running_iteration_keeps_accounting_exact() -> None:
    scheduler = decode()
    scheduler.enqueue(DecodeJob("a", 100, 10, enqueued_s=0.0))
    scheduler.enqueue(DecodeJob("b", 100, 3, enqueued_s=0.0))
    scheduler.start_iteration(0.0, 1410)
    scheduler.finish_iteration()
    scheduler.start_iteration(0.0, 1410)
    assert scheduler.cancel("a")  # its token of this iteration is still being computed
    finished = scheduler.finish_iteration()
    assert finished == []
    assert scheduler.batch_size == 1
    assert [job.key for job in scheduler.running_jobs()] == ["b"]
    assert list(run_to_completion(scheduler)) == ["b"]
    assert scheduler.kv_tokens_used == 0


def test_decode_cancel_of_a_job_due_to_finish_now_does_not_finish_it() -> None:
    scheduler = decode()
    scheduler.enqueue(DecodeJob("a", 10, 1, enqueued_s=0.0))
    scheduler.start_iteration(0.0, 1410)
    assert scheduler.cancel("a")
    assert scheduler.finish_iteration() == []
    assert scheduler.kv_tokens_used == 0


def test_decode_refuses_two_running_iterations_and_finishing_none() -> None:
    scheduler = decode()
    with pytest.raises(RuntimeError):
        scheduler.finish_iteration()
    scheduler.enqueue(DecodeJob("a", 10, 3, enqueued_s=0.0))
    scheduler.start_iteration(0.0, 1410)
    with pytest.raises(RuntimeError):
        scheduler.start_iteration(0.0, 1410)


def test_decode_cancel_during_an_iteration_never_reports_negative_kv() -> None:
    # The engine's exact sequence: a lone request's iteration is running when its client goes
    # away; the engine's state (read by telemetry at any moment) must not dip to -1 before the
    # iteration ends, nor stay there when the iteration never ends (engine stopped).
    scheduler = decode()
    scheduler.enqueue(DecodeJob("a", 100, 10, enqueued_s=0.0))
    scheduler.start_iteration(0.0, 1410)
    scheduler.finish_iteration()
    assert scheduler.kv_tokens_used == 102
    scheduler.start_iteration(0.0, 1410)
    assert scheduler.cancel("a")
    assert scheduler.kv_tokens_used == 0  # was -1 until the iteration finished
    assert scheduler.finish_iteration() == []
    assert scheduler.kv_tokens_used == 0
    assert scheduler.start_iteration(0.0, 1410) is None


def test_decode_cancel_mid_iteration_leaves_exactly_the_other_jobs_kv() -> None:
    scheduler = decode()
    scheduler.enqueue(DecodeJob("a", 100, 10, enqueued_s=0.0))
    scheduler.enqueue(DecodeJob("b", 50, 10, enqueued_s=0.0))
    scheduler.start_iteration(0.0, 1410)
    scheduler.finish_iteration()  # a: 100 + 1 + 1, b: 50 + 1 + 1
    scheduler.start_iteration(0.0, 1410)
    assert scheduler.cancel("a")
    assert scheduler.kv_tokens_used == 52  # b's; its token of this iteration is not done yet
    assert not scheduler.cancel("a")  # a second cancel changes nothing
    assert scheduler.kv_tokens_used == 52
    scheduler.finish_iteration()
    assert scheduler.kv_tokens_used == 53
    assert list(run_to_completion(scheduler)) == ["b"]
    assert scheduler.kv_tokens_used == 0
