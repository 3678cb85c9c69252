"""Best-effort delivery of request completions to telemetry, off the request's path.

Generate only puts a record in a bounded queue; one background task sends them. A full queue or
a telemetry outage drops records (logged once per outage) and never slows a token stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from voltana.services.telemetry.records import Completion

_LOG = logging.getLogger(__name__)


class CompletionSink(Protocol):
    """Where completions go (TelemetryClient implements it)."""

    async def report_completion(self, completion: Completion) -> None: ...


class CompletionReporter:
    def __init__(self, sink: CompletionSink, *, queue_size: int, timeout_s: float) -> None:
        self._sink = sink
        self._timeout_s = timeout_s
        self._queue: asyncio.Queue[Completion] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.sent = 0
        self.dropped = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="router-completion-reporter")

    def submit(self, completion: Completion) -> None:
        """Queue one record; never blocks (drops it when the queue is full)."""
        try:
            self._queue.put_nowait(completion)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                _LOG.warning("completion queue full; dropped %d completion(s) so far", self.dropped)

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued record was handled (sent or dropped); False on timeout."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self, flush_timeout_s: float) -> None:
        """Send what is queued (for up to ``flush_timeout_s``), then stop the sender."""
        if self._task is None:
            return
        if not await self.flush(flush_timeout_s):
            _LOG.warning("%d completion(s) not reported at shutdown", self._queue.qsize())
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        while True:
            completion = await self._queue.get()
            try:
                await asyncio.wait_for(self._sink.report_completion(completion), self._timeout_s)
                self.sent += 1
                if self._failing:
                    _LOG.info("reporting completions to telemetry works again")
                self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as error:  # telemetry down or slow: drop, say so once per outage
                self.dropped += 1
                if not self._failing:
                    _LOG.warning("reporting a completion to telemetry failed: %s", error)
                self._failing = True
            finally:
                self._queue.task_done()
