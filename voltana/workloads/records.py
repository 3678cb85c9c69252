"""Rows read from a trace file, before they become ordered, rebased requests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from voltana.workloads.errors import TraceFormatError, shown
from voltana.workloads.request import TraceRequest

_NS_PER_S = 1_000_000_000


class TraceRecord(NamedTuple):
    """One request as a file states it: absolute time, token counts, and where it was read."""

    time_ns: int  # absolute, in the file's own clock; integer so 100 ns digits stay exact
    input_tokens: int
    output_tokens: int
    line: int


def parse_token_count(text: str, column: str, source: str, line: int) -> int:
    """A non-negative integer token count, raised to at least 1.

    A request always carries at least one prompt token and produces at least one output token
    (the first token ends prefill), so 0 in a trace is read as 1.
    """
    try:
        value = int(text)
    except ValueError:
        raise TraceFormatError(source, line, f"{column} {shown(text)} is not an integer") from None
    return checked_token_count(value, column, source, line)


def checked_token_count(value: int, column: str, source: str, line: int) -> int:
    if value < 0:
        raise TraceFormatError(source, line, f"{column} {value} is negative")
    return max(1, value)


def build_requests(
    records: Sequence[TraceRecord], source: str, backwards_tolerance_s: float
) -> list[TraceRequest]:
    """Order records by time (stable), rebase them so the first arrives at 0.0 s, number them.

    Traces are written in time order; logging jitter may put a row slightly before the one above
    it. Up to ``backwards_tolerance_s`` of that is reordered silently, more is an error because the
    file is then most likely not one trace in time order.
    """
    if not records:
        raise TraceFormatError(source, None, "holds no requests")
    tolerance_ns = round(backwards_tolerance_s * _NS_PER_S)
    latest = records[0]
    for record in records:
        if record.time_ns < latest.time_ns - tolerance_ns:
            back_s = (latest.time_ns - record.time_ns) / _NS_PER_S
            raise TraceFormatError(
                source,
                record.line,
                f"timestamp is {back_s:.3f} s earlier than line {latest.line} "
                f"(more than the {backwards_tolerance_s:g} s tolerance); is the trace sorted?",
            )
        if record.time_ns > latest.time_ns:
            latest = record
    ordered = sorted(records, key=lambda record: record.time_ns)
    first_ns = ordered[0].time_ns
    return [
        TraceRequest(
            request_id=index,
            arrival_s=(record.time_ns - first_ns) / _NS_PER_S,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
        )
        for index, record in enumerate(ordered)
    ]
