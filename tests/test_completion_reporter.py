"""The router's completion reporter keeps records through telemetry outages (a sink of our own
CompletionSink protocol that fails on demand)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from voltana.errors import UnavailableError
from voltana.services.router.reporting import CompletionReporter
from voltana.services.telemetry import Completion

pytestmark = pytest.mark.unit


def record(index: int) -> Completion:
    return Completion(
        request_id=f"r{index}",
        prefill_id="prefill-0",
        decode_id="decode-0",
        input_tokens=1,
        output_tokens=1,
        ttft_ms=1.0,
        mean_itl_ms=None,
        ok=True,
        finished_at_s=float(index + 1),
    )


class OutageSink:
    """Takes records while ``up``; raises UnavailableError (as TelemetryClient does) when not."""

    def __init__(self) -> None:
        self.up = True
        self.received: list[str] = []
        self.refused = 0

    async def report_completions(self, completions: Sequence[Completion]) -> dict[int, str]:
        await asyncio.sleep(0)
        if not self.up:
            self.refused += len(completions)
            raise UnavailableError("telemetry is down")
        self.received.extend(c.request_id for c in completions)
        return {}


async def test_records_wait_out_an_outage_and_none_is_lost() -> None:
    sink = OutageSink()
    reporter = CompletionReporter(
        sink, queue_size=1000, timeout_s=1.0, batch_size=8, retry_s=0.01, max_retry_s=0.05
    )
    reporter.start()
    for i in range(20):
        reporter.submit(record(i))
    assert await reporter.flush(2.0)

    sink.up = False
    for i in range(20, 120):
        reporter.submit(record(i))
    await asyncio.sleep(0.2)
    assert sink.refused > 0 and reporter.pending == 100

    sink.up = True
    assert await reporter.flush(5.0)
    await reporter.stop(flush_timeout_s=1.0)
    assert sorted(sink.received, key=lambda r: int(r[1:])) == [f"r{i}" for i in range(120)]
    assert (reporter.sent, reporter.dropped, reporter.pending) == (120, 0, 0)
    assert reporter.retried >= sink.refused > 0


async def test_a_full_buffer_drops_the_oldest_and_counts_it() -> None:
    sink = OutageSink()
    sink.up = False
    reporter = CompletionReporter(sink, queue_size=5, timeout_s=1.0, retry_s=10.0)
    for i in range(8):  # not started: nothing is sent
        reporter.submit(record(i))
    assert (reporter.dropped, reporter.pending) == (3, 5)
    sink.up = True
    reporter.start()
    assert await reporter.flush(2.0)
    await reporter.stop(flush_timeout_s=1.0)
    assert sink.received == ["r3", "r4", "r5", "r6", "r7"]


async def test_stop_reports_what_telemetry_never_took(caplog: pytest.LogCaptureFixture) -> None:
    sink = OutageSink()
    sink.up = False
    reporter = CompletionReporter(sink, queue_size=100, timeout_s=1.0, retry_s=0.01)
    reporter.start()
    reporter.submit(record(0))
    await reporter.stop(flush_timeout_s=0.1)
    assert "1 completion record(s) not reported at shutdown" in caplog.text
    assert "r0" in caplog.text


class RefusingSink(OutageSink):
    """Refuses every record whose id is in ``invalid`` (as telemetry refuses a bad record)."""

    def __init__(self, invalid: set[str]) -> None:
        super().__init__()
        self.invalid = invalid
        self.calls = 0

    async def report_completions(self, completions: Sequence[Completion]) -> dict[int, str]:
        self.calls += 1
        refused = {
            i: "bad record" for i, c in enumerate(completions) if c.request_id in self.invalid
        }
        await super().report_completions([c for i, c in enumerate(completions) if i not in refused])
        return refused


async def test_records_go_in_batches_and_a_refused_one_is_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = RefusingSink({"r3"})
    reporter = CompletionReporter(sink, queue_size=100, timeout_s=1.0, batch_size=4, retry_s=0.01)
    for i in range(10):  # buffered before the sender starts: three calls carry them
        reporter.submit(record(i))
    reporter.start()
    assert await reporter.flush(2.0)
    await reporter.stop(flush_timeout_s=1.0)
    assert sink.calls == 3
    assert sink.received == [f"r{i}" for i in range(10) if i != 3]
    assert (reporter.sent, reporter.rejected, reporter.retried) == (9, 1, 0)
    assert "refused the record of request 'r3': bad record" in caplog.text
