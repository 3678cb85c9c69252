"""The observation contract: one definition of what policies see, whoever observes."""

from __future__ import annotations

import numpy as np
import pytest

from voltana.contract.state import InstanceState, Phase
from voltana.engine.prometheus import parse_prometheus_text
from voltana.engine.sglang_client import metrics_by_name
from voltana.engine.stats import EngineMetrics
from voltana.observation import (
    ITL_BUCKETS_S,
    TTFT_BUCKETS_S,
    ArrivalWindow,
    EngineGauges,
    InflightLedger,
    InstanceObserver,
    LatencyWindow,
)
from voltana.stack.sglang_reporter import SglangInstanceReporter, SglangInstanceSettings

pytestmark = pytest.mark.unit


def test_latency_window_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    window = LatencyWindow((0.1, 0.2, 0.4), window_s=10.0)
    for value in (0.05, 0.15, 0.15, 0.3):
        window.add(1.0, value)
    # Rank 0.5 * 4 = 2 falls in (0.1, 0.2], which holds samples 2 and 3: halfway through it.
    assert window.quantile_ms(1.0, 0.5) == pytest.approx(150.0)
    assert window.mean_ms(1.0) == pytest.approx(162.5)
    # Beyond the last finite bound: that bound.
    window.add(1.0, 9.0)
    assert window.quantile_ms(1.0, 0.99) == pytest.approx(400.0)


def test_latency_window_forgets_samples_older_than_its_window() -> None:
    window = LatencyWindow(ITL_BUCKETS_S, window_s=5.0)
    window.add(0.0, 0.100, 10)
    window.add(4.0, 0.010, 10)
    assert window.mean_ms(4.0) == pytest.approx(55.0)
    assert window.mean_ms(5.5) == pytest.approx(10.0)
    assert window.mean_ms(9.5) is None  # empty: nothing measured, not zero


def test_bucket_increments_give_what_the_samples_give() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(np.log(0.3), 0.6, size=200)
    samples = LatencyWindow(TTFT_BUCKETS_S, window_s=5.0)
    increments = LatencyWindow(TTFT_BUCKETS_S, window_s=5.0)
    counts = np.zeros(len(TTFT_BUCKETS_S) + 1)
    for value in values:
        samples.add(1.0, float(value))
        counts[np.searchsorted(TTFT_BUCKETS_S, value, side="left")] += 1
    increments.add_increments(1.0, counts, float(values.sum()), len(values))
    for quantile in (0.5, 0.9, 0.99):
        assert increments.quantile_ms(1.0, quantile) == pytest.approx(
            samples.quantile_ms(1.0, quantile)
        )
    assert increments.mean_ms(1.0) == pytest.approx(samples.mean_ms(1.0))


def test_a_kept_quantile_is_the_one_a_fresh_window_computes() -> None:
    """The window keeps its last quantile until its counts change (a sample in, one aged
    out): asked at every report, it must still answer what the samples now say."""
    rng = np.random.default_rng(1)
    kept = LatencyWindow(TTFT_BUCKETS_S, window_s=2.0)
    samples: list[tuple[float, float]] = []
    for step in range(400):
        now_s = step * 0.05
        if rng.random() < 0.3:
            value = float(rng.lognormal(np.log(0.3), 0.8))
            kept.add(now_s, value)
            samples.append((now_s, value))
        fresh = LatencyWindow(TTFT_BUCKETS_S, window_s=2.0)
        for at_s, value in samples:
            if at_s >= now_s - 2.0:
                fresh.add(at_s, value)
        for quantile in (0.9, 0.9, 0.5):
            assert kept.quantile_ms(now_s, quantile) == fresh.quantile_ms(now_s, quantile)


def test_arrivals_are_requests_and_tokens_per_second_over_the_window() -> None:
    arrivals = ArrivalWindow(window_s=5.0)
    for n in range(10):
        arrivals.add(float(n), 100)
    assert arrivals.requests_per_s(9.0) == pytest.approx(6 / 5.0)  # t = 4..9
    assert arrivals.tokens_per_s(9.0) == pytest.approx(600 / 5.0)


def state(instance_id: str, observed_at_s: float, **fields: object) -> InstanceState:
    phase = Phase.PREFILL if instance_id.startswith("p") else Phase.DECODE
    return InstanceState(
        instance_id, phase, "a100-80g", 1410, observed_at_s=observed_at_s, **fields
    )  # type: ignore[arg-type]


def test_ledger_counts_a_request_until_a_report_taken_after_it_arrived() -> None:
    ledger = InflightLedger()
    ledger.place("r1", "p", 1000)
    ledger.place("r1", "d", 1001)
    # Not yet at the engine: every report misses it.
    assert ledger.pending("p", 99.0) == (1, 1000)
    ledger.visible("r1", "p", 10.0)
    assert ledger.pending("p", 9.9) == (1, 1000)  # a report taken before it got there
    assert ledger.pending("p", 10.0) == (0, 0)  # a report taken after it did shows it
    annotated = ledger.annotate(state("d", 12.0))
    assert (annotated.inflight_requests, annotated.inflight_tokens) == (1, 1001)
    ledger.settle("p", 10.5)
    assert len(ledger) == 1  # the prefill entry is settled, the decode one still in flight
    ledger.forget("r1")
    assert len(ledger) == 0 and ledger.pending("d", 0.0) == (0, 0)


def _render(metrics: EngineMetrics) -> dict[str, float]:
    """What the SGLang reporter reads from a /metrics scrape of an engine with these metrics."""
    text = metrics.render({"model_name": "m"}, {"sglang:num_queue_reqs": ("", 0.0)})
    return metrics_by_name(parse_prometheus_text(text))


def test_one_history_gives_one_observation_from_the_simulator_and_the_sglang_reporter() -> None:
    """The simulator (and the simulated engine, which uses the same observer) see every sample;
    the reporter of a real SGLang server sees only its Prometheus histograms scrape by scrape.
    The contract makes both report the same recent TTFT and ITL."""
    rng = np.random.default_rng(1)
    observer = InstanceObserver(Phase.DECODE, "a100-80g")
    metrics = EngineMetrics()
    clock = [0.0]
    reporter = SglangInstanceReporter(
        SglangInstanceSettings(
            telemetry_address="127.0.0.1:1",
            instance_id="d",
            phase=Phase.DECODE,
            engine_url="http://127.0.0.1:1",
        ),
        clock=lambda: clock[0],
    )
    reporter.state_from_metrics(_render(metrics))  # the baseline scrape
    for step in range(60):  # 3 s of history, scraped every 0.25 s
        at_s = 0.05 * (step + 1)
        ttft_s = float(rng.lognormal(np.log(0.25), 0.5))
        gap_s, tokens = float(rng.uniform(0.008, 0.03)), int(rng.integers(1, 64))
        observer.note_first_token(at_s, ttft_s)
        metrics.ttft.observe(ttft_s)
        observer.note_decode_step(at_s, gap_s, tokens)
        metrics.itl.observe(gap_s, tokens)
        if (step + 1) % 5 == 0:
            clock[0] = at_s
            reported = reporter.state_from_metrics(_render(metrics))
    simulated = observer.observe("d", 3.0, EngineGauges())
    assert reported.recent_ttft_ms == pytest.approx(simulated.recent_ttft_ms)
    assert reported.recent_itl_ms == pytest.approx(simulated.recent_itl_ms)
