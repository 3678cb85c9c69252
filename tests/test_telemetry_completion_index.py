"""The incremental windows of CompletionIndex equal a brute-force recomputation from every
completion, on random data: completions arriving in any order (late ones included), windows
moving forward by any step (and back), several lengths at once, any selection, the cap."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voltana.contract.state import SloTarget
from voltana.services.telemetry.completion_index import CompletionIndex
from voltana.services.telemetry.records import Aggregates, Completion, SeriesPoint, WindowReport
from voltana.services.telemetry.window import compute_window_report

pytestmark = pytest.mark.unit

INSTANCES = ("p0", "p1", "d0", "d1")
SLO = SloTarget(ttft_ms=200.0, itl_ms=30.0)
STATUSES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL")


@st.composite
def completions(draw: st.DrawFn, request_id: int) -> Completion:
    ok = draw(st.booleans())
    output_tokens = draw(st.integers(0, 5))
    return Completion(
        request_id=f"r{request_id}",
        prefill_id=draw(st.sampled_from(("p0", "p1", "")))
        if not ok
        else draw(st.sampled_from(("p0", "p1"))),
        decode_id=draw(st.sampled_from(("d0", "d1", "p0", ""))),
        input_tokens=draw(st.integers(0, 1000)),
        output_tokens=output_tokens,
        # Few distinct values: ties in latencies and finish times are the hard cases.
        ttft_ms=draw(st.sampled_from((50.0, 150.0, 150.0, 250.0))) if output_tokens else None,
        mean_itl_ms=draw(st.sampled_from((10.0, 25.0, 40.0))) if output_tokens > 1 else None,
        ok=ok,
        finished_at_s=float(draw(st.integers(0, 60))) / 2,
        status="" if ok else draw(st.sampled_from(STATUSES)),
        slo=draw(st.sampled_from((None, None, SloTarget(ttft_ms=100.0, itl_ms=50.0)))),
        energy_j=draw(st.sampled_from((None, 1.5, 4.25))),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> list[tuple[str, object]]:
    """Steps: ("add", completion) or ("query", (now_s, window_s, selection or None))."""
    steps: list[tuple[str, object]] = []
    for n in range(draw(st.integers(1, 60))):
        if draw(st.integers(0, 3)) == 0:
            now_s = float(draw(st.integers(0, 70))) / 2
            window_s = draw(st.sampled_from((1.0, 2.5, 5.0, 12.0, 40.0)))
            selection = draw(st.one_of(st.none(), st.lists(st.sampled_from(INSTANCES), max_size=3)))
            steps.append(("query", (now_s, window_s, selection)))
        else:
            steps.append(("add", draw(completions(n))))
            if draw(st.integers(0, 9)) == 0:  # a retried report: the same record again
                steps.append(("add", steps[-1][1]))
    return steps


def _close(a: Aggregates, b: Aggregates) -> None:
    # Sums of floats added and taken out in another order: equal to rounding.
    assert a.request_energy_j == pytest.approx(b.request_energy_j, abs=1e-9)
    if b.mean_request_energy_j is None:
        assert a.mean_request_energy_j is None
    else:
        assert a.mean_request_energy_j == pytest.approx(b.mean_request_energy_j, abs=1e-9)

    # Everything else exactly (counts, percentiles, attainment, energy from the series).
    def rest(aggregates: Aggregates) -> Aggregates:
        return dataclasses.replace(aggregates, request_energy_j=0.0, mean_request_energy_j=None)

    assert rest(a) == rest(b)


def _equal(incremental: WindowReport, brute: WindowReport) -> None:
    assert incremental.instances.keys() == brute.instances.keys()
    for instance_id, aggregates in brute.instances.items():
        _close(incremental.instances[instance_id], aggregates)
    _close(incremental.cluster, brute.cluster)


@settings(max_examples=150, deadline=None)
@given(scenarios(), st.sampled_from((1000, 7)))
def test_incremental_windows_equal_a_recomputation(
    steps: list[tuple[str, object]], cap: int
) -> None:
    index = CompletionIndex(cap, max_windows=3)
    kept: list[Completion] = []  # what the store holds: each record once, newest `cap`
    energy = {"d0": [SeriesPoint(1.0, 0.0), SeriesPoint(9.0, 5.0), SeriesPoint(20.0, 9.0)]}
    for kind, value in steps:
        if kind == "add":
            assert isinstance(value, Completion)
            if value not in kept:
                kept.append(value)
                kept.sort(key=lambda c: c.finished_at_s)  # stable: ties in arrival order
                del kept[: max(0, len(kept) - cap)]
            index.add(value)
            assert len(index) == len(kept)
            continue
        assert isinstance(value, tuple)
        now_s, window_s, selection = value
        ids = list(INSTANCES) if selection is None else selection
        # The same question to the running windows and to a recomputation from every record.
        query: dict[str, Any] = {
            "instance_ids": ids,
            "whole_cluster": selection is None,
            "window_s": window_s,
            "now_s": now_s,
            "energy_series": energy,
            "clock_series": {},
            "slo": SLO,
        }
        _equal(index.report(**query), compute_window_report(completions=kept, **query))


def test_a_late_completion_enters_the_windows_that_cover_it() -> None:
    index = CompletionIndex(100)
    base = Completion("a", "p0", "d0", 10, 3, 100.0, 20.0, True, finished_at_s=50.0)
    index.add(base)

    def finished() -> int:
        report = index.report(
            instance_ids=["d0"], whole_cluster=False, window_s=30.0, now_s=60.0,
            energy_series={}, clock_series={}, slo=SLO,
        )  # fmt: skip
        return report.cluster.finished

    assert finished() == 1
    index.add(dataclasses.replace(base, request_id="late", finished_at_s=35.0))
    index.add(dataclasses.replace(base, request_id="old", finished_at_s=30.0))  # just outside
    assert finished() == 2
