"""Delivery of request outcomes to telemetry, off the request's path, through outages.

Generate only appends a record to a buffer; one background task sends them, up to
``batch_size`` in one call, at most every ``interval_s`` (what piles up meanwhile goes in the
next, so under load a call carries many records). A record whose report fails stays in the
buffer and is sent again
(backing off from ``retry_s`` up to ``max_retry_s``) until telemetry takes it, so a telemetry
or Redis outage delays records but loses none. Each record gets a unique ``record_id`` when it
is buffered and keeps it through every retry: telemetry counts an id once, so a record sent
twice (a reply lost after the write) counts once. Only a buffer of ``queue_size`` records
overflowing drops the oldest (counted and logged), and what is still unsent when the router
stops is logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from voltana.errors import InvalidArgumentError
from voltana.lifecycle import cancel_and_wait
from voltana.services.telemetry.records import Completion
from voltana.text import shorten

_LOG = logging.getLogger(__name__)
DEFAULT_BATCH_SIZE = 32
DEFAULT_RETRY_S = 0.2
DEFAULT_MAX_RETRY_S = 2.0


class CompletionSink(Protocol):
    """Where completions go (TelemetryClient implements it)."""

    async def report_completions(self, completions: Sequence[Completion]) -> Mapping[int, str]:
        """Take the records; returns those refused for good (index → why)."""
        ...


class CompletionReporter:
    def __init__(
        self,
        sink: CompletionSink,
        *,
        queue_size: int,
        timeout_s: float,
        batch_size: int = DEFAULT_BATCH_SIZE,
        retry_s: float = DEFAULT_RETRY_S,
        max_retry_s: float = DEFAULT_MAX_RETRY_S,
        on_dropped: Callable[[], object] | None = None,
        interval_s: float = 0.0,
    ) -> None:
        """``on_dropped`` is called for each record a full buffer drops (a metric);
        ``interval_s``: the least time between two calls that went through."""
        self._sink = sink
        self._on_dropped = on_dropped
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._buffer: deque[Completion] = deque()
        self._sending = 0
        self._has_work = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.sent = 0
        self.dropped = 0
        # Reports that failed and were kept to be sent again.
        self.retried = 0
        # Records telemetry refused as invalid (a bug: the router builds them).
        self.rejected = 0

    @property
    def pending(self) -> int:
        """Records not yet taken by telemetry."""
        return len(self._buffer) + self._sending

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="router-completion-reporter")

    def submit(self, completion: Completion) -> None:
        """Buffer one record (stamped with a record id when it has none); never blocks."""
        if not completion.record_id:
            completion = dataclasses.replace(completion, record_id=uuid.uuid4().hex)
        if len(self._buffer) >= self._queue_size:
            self._buffer.popleft()
            self.dropped += 1
            if self._on_dropped is not None:
                self._on_dropped()
            if self.dropped == 1 or self.dropped % 1000 == 0:
                _LOG.error(
                    "completion buffer full (%d records, telemetry unreachable?); dropped the "
                    "oldest, %d so far",
                    self._queue_size,
                    self.dropped,
                )
        self._buffer.append(completion)
        self._idle.clear()
        self._has_work.set()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every buffered record was taken by telemetry; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self, flush_timeout_s: float) -> None:
        """Send what is buffered (for up to ``flush_timeout_s``), then stop the sender."""
        if self._task is None:
            return
        await self.flush(flush_timeout_s)
        task, self._task = self._task, None
        await cancel_and_wait([task])
        if self._buffer:
            _LOG.error(
                "%d completion record(s) not reported at shutdown (telemetry unreachable); "
                "request ids: %s",
                len(self._buffer),
                ", ".join(c.request_id for c in list(self._buffer)[:100]),
            )

    async def _send(self, batch: list[Completion]) -> bool:
        """True when the batch is done with: taken (counted in ``sent``) or refused for good
        (counted in ``rejected``); False when it must be sent again."""
        try:
            refused = await asyncio.wait_for(self._sink.report_completions(batch), self._timeout_s)
        except asyncio.CancelledError:
            raise
        except InvalidArgumentError as error:
            # Telemetry will never take these; retrying would block the rest behind them.
            refused = dict.fromkeys(range(len(batch)), str(error))
        except Exception as error:  # telemetry down or slow: keep the records, say so once
            if not self._failing:
                _LOG.warning(
                    "reporting completions to telemetry failed (%s); keeping them to retry",
                    error,
                )
            self._failing = True
            return False
        for index, reason in refused.items():
            self.rejected += 1
            _LOG.error(
                "telemetry refused the record of request %s: %s",
                shorten(batch[index].request_id),
                reason,
            )
        self.sent += len(batch) - len(refused)
        return True

    async def _run(self) -> None:
        retry_s = self._retry_s
        while True:
            if not self._buffer:
                self._has_work.clear()
                if self._sending == 0:
                    self._idle.set()
                await self._has_work.wait()
                continue
            batch = [
                self._buffer.popleft() for _ in range(min(self._batch_size, len(self._buffer)))
            ]
            self._sending = len(batch)
            try:
                done = await self._send(batch)
            except asyncio.CancelledError:
                self._buffer.extendleft(reversed(batch))  # not known to be sent
                raise
            finally:
                self._sending = 0
            if done:
                if self._failing:
                    _LOG.info("reporting completions to telemetry works again")
                self._failing = False
                retry_s = self._retry_s
                if self._interval_s > 0 and not self._buffer:
                    await asyncio.sleep(self._interval_s)  # let the next batch gather
                continue
            self.retried += len(batch)
            # Back in front, oldest first, and wait before trying again.
            self._buffer.extendleft(reversed(batch))
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, self._max_retry_s)
