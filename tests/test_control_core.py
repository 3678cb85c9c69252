"""The control core's rules (voltana.control), which the live router, the live controller and
the simulator all drive: placement notices and their hold, the placement book, clock commands."""

from __future__ import annotations

from typing import Any

import pytest

from voltana.contract.state import InstanceState, Phase
from voltana.control import NoticeBoard, PlacementBook, needs_clock_command

pytestmark = pytest.mark.unit


def state(observed_at_s: float, instance_id: str = "d0", **fields: Any) -> InstanceState:
    return InstanceState(
        instance_id=instance_id,
        phase=Phase.DECODE,
        gpu_key="a100-80g",
        sm_clock_mhz=1005,
        observed_at_s=observed_at_s,
        **fields,
    )


class TestNoticeBoard:
    def test_without_a_notice_the_report_stands(self) -> None:
        board = NoticeBoard(0.25)
        report = state(10.0)
        assert board.newest(report, "d0") is report
        assert board.newest(None, "d0") is None

    def test_an_idle_report_within_the_hold_does_not_replace_the_notice(self) -> None:
        """The request was placed but has not reached the engine: the idle report taken
        meanwhile must not park the clock the notice raised."""
        board = NoticeBoard(0.25)
        notice = state(10.0, inflight_requests=1, inflight_tokens=900)
        board.notice(notice)
        assert board.newest(state(9.9), "d0") is notice  # older than the notice
        assert board.newest(state(10.1), "d0") is notice  # idle, within the hold
        late = state(10.25)
        assert board.newest(late, "d0") is late  # the hold is over
        assert board.newest(state(10.1), "d0").observed_at_s == 10.1  # the notice is gone

    def test_a_report_showing_work_replaces_the_notice_at_once(self) -> None:
        board = NoticeBoard(0.25)
        board.notice(state(10.0, inflight_requests=1))
        busy = state(10.05, running_batch=3)
        assert board.newest(busy, "d0") is busy

    def test_a_notice_stands_for_an_instance_not_reported_yet(self) -> None:
        board = NoticeBoard(0.25)
        notice = state(10.0)
        board.notice(notice)
        assert board.newest(None, "d0") is notice
        board.forget("d0")
        assert board.newest(None, "d0") is None

    def test_notices_are_per_instance(self) -> None:
        board = NoticeBoard(0.25)
        board.notice(state(10.0, "p0"))
        other = state(10.1, "d0")
        assert board.newest(other, "d0") is other


class TestPlacementBook:
    def test_a_placement_counts_until_a_report_includes_it(self) -> None:
        book = PlacementBook(window_s=10.0)
        book.place("r1", "p0", "d0", 100, now_s=5.0)
        prefill = book.annotate(state(4.0, "p0"), now_s=5.0)
        decode = book.annotate(state(4.0, "d0"), now_s=5.0)
        assert (prefill.inflight_requests, prefill.inflight_tokens) == (1, 100)
        assert (decode.inflight_requests, decode.inflight_tokens) == (1, 101)
        assert prefill.arrival_rate_rps == pytest.approx(0.1)
        book.reached("r1", "p0", at_s=5.5)
        # A report taken before the request got there still misses it; one after includes it.
        assert book.annotate(state(5.4, "p0"), now_s=6.0).inflight_requests == 1
        book.reported(state(5.6, "p0"))
        assert book.annotate(state(5.6, "p0"), now_s=6.0).inflight_requests == 0
        book.finished("r1")
        assert len(book) == 0

    def test_other_routers_shares_are_added_once(self) -> None:
        class Others:
            inflight_requests = 2
            inflight_tokens = 500
            arrival_rate_rps = 1.5
            arrival_tokens_per_s = 300.0

        book = PlacementBook(window_s=10.0)
        book.place("r1", "p0", "d0", 100, now_s=5.0)
        seen = book.annotate(state(4.0, "p0"), now_s=5.0, others=Others())
        assert (seen.inflight_requests, seen.inflight_tokens) == (3, 600)
        assert seen.arrival_rate_rps == pytest.approx(1.6)
        assert seen.arrival_tokens_per_s == pytest.approx(310.0)

    def test_an_instance_it_placed_nothing_on_keeps_the_reports_rates(self) -> None:
        book = PlacementBook(window_s=10.0)
        report = state(4.0, "p1", arrival_rate_rps=2.0, arrival_tokens_per_s=400.0)
        assert book.annotate(report, now_s=5.0) is report


@pytest.mark.parametrize(
    ("decided", "confirmed", "lease_held", "now_s", "retry_at_s", "expected"),
    [
        (1005, 1005, True, 1.0, 0.0, False),  # nothing to do
        (1005, 1410, True, 1.0, 0.0, True),  # a new clock
        (1005, 1005, False, 1.0, 0.0, True),  # the lease lapsed: apply again
        (1005, None, True, 1.0, 0.0, True),  # never confirmed
        (1005, 1410, True, 1.0, 2.0, False),  # backing off after a failure
    ],
)
def test_when_a_decision_becomes_a_command(
    decided: int,
    confirmed: int | None,
    lease_held: bool,
    now_s: float,
    retry_at_s: float,
    expected: bool,
) -> None:
    assert (
        needs_clock_command(
            decided, confirmed, lease_held=lease_held, now_s=now_s, retry_at_s=retry_at_s
        )
        is expected
    )
