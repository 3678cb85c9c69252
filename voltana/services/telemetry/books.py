"""Exact books through store restarts: completions this process stored, written again into a
store that may have lost them.

A completion is acknowledged to its reporter (the router, which keeps it until then) only once
the store took it. A Redis that restarts loses what it held (restarted empty) or its last
writes (AOF every second), acknowledged ones included. So telemetry keeps what it stored
lately in a bounded journal and watches the store's epoch (Redis' run id): when the epoch
moves, it writes the journal again. The store counts a record id once, so a replay never
counts a record twice; replaying into a store that lost nothing changes nothing.

The journal keeps records for ``retention_s`` (on the store's clock, by finish time) and at most
``cap`` of them; one that the cap pushes out earlier is counted (metric) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge

from voltana.services.telemetry.errors import TelemetryError
from voltana.services.telemetry.records import Completion
from voltana.services.telemetry.settings import TelemetrySettings
from voltana.services.telemetry.store import TelemetryStore

_LOG = logging.getLogger(__name__)
# A full journal logs its first drop, then one line per this many.
_DROP_LOG_EVERY = 1000
# Records written again at once (concurrent store calls) when replaying.
_REPLAY_BATCH = 64


class CompletionJournal:
    """The latest stored completions, oldest first; pure bookkeeping (no I/O)."""

    def __init__(self, *, cap: int, retention_s: float) -> None:
        self._cap = cap
        self._retention_s = retention_s
        self._records: deque[Completion] = deque()
        # Records pushed out by the cap before their retention was over.
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._records)

    @property
    def retention_s(self) -> float:
        return self._retention_s

    def add(self, completion: Completion, now_s: float) -> int:
        """Keep ``completion``; returns how many records the cap pushed out for it (0 or 1)."""
        self._expire(now_s)
        pushed_out = 0
        if len(self._records) >= self._cap:
            self._records.popleft()
            pushed_out = 1
            self.dropped += 1
        self._records.append(completion)
        return pushed_out

    def records(self, now_s: float) -> list[Completion]:
        """Every record still within its retention, oldest first."""
        self._expire(now_s)
        return list(self._records)

    def _expire(self, now_s: float) -> None:
        horizon_s = now_s - self._retention_s
        while self._records and self._records[0].finished_at_s < horizon_s:
            self._records.popleft()


class BooksMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.journal_records = Gauge(
            "voltana_telemetry_completion_journal_records",
            "Completions kept to be written again if the store loses them.",
            registry=registry,
        )
        self.journal_dropped = Counter(
            "voltana_telemetry_completion_journal_dropped",
            "Completions pushed out of the replay journal by its cap before their retention "
            "was over (a store reset after that would lose them).",
            registry=registry,
        )
        self.store_resets = Counter(
            "voltana_telemetry_store_resets",
            "Times the store came back as another incarnation (a Redis restart).",
            registry=registry,
        )
        self.replayed = Counter(
            "voltana_telemetry_completions_replayed",
            "Completions written again into a store that restarted (each counted once there).",
            registry=registry,
        )


class CompletionBooks:
    """Stores completions, journals them, and replays the journal when the store restarted.

    ``record`` is what ReportCompletion calls; ``check_store`` (run by ``run`` every
    ``interval_s``, and once before serving) reads the store's epoch and replays on a change.
    """

    def __init__(
        self,
        store: TelemetryStore,
        journal: CompletionJournal,
        metrics: BooksMetrics,
        *,
        interval_s: float,
    ) -> None:
        self._store = store
        self._journal = journal
        self._metrics = metrics
        self._interval_s = interval_s
        self._epoch: str | None = None
        self._stopping = asyncio.Event()
        self.replayed = 0

    @property
    def journal(self) -> CompletionJournal:
        return self._journal

    async def record(self, completion: Completion) -> None:
        """Store one completion (raises as the store does); journal it once stored."""
        await self._store.record_completion(completion)
        if self._journal.add(completion, self._store.clock()):
            self._metrics.journal_dropped.inc()
            dropped = self._journal.dropped
            if dropped == 1 or dropped % _DROP_LOG_EVERY == 0:
                _LOG.error(
                    "completion replay journal full; dropped the oldest record (%d so far): "
                    "a store restart now would lose records (raise replay_journal_cap)",
                    dropped,
                )
        self._metrics.journal_records.set(len(self._journal))

    async def check_store(self) -> int:
        """Replay the journal if the store is another incarnation than last seen; returns
        how many records were written again. Raises TelemetryError while the store is down
        (the replay is tried again at the next check)."""
        epoch = await self._store.epoch()
        if self._epoch is None or epoch == self._epoch:
            self._epoch = epoch
            return 0
        records = self._journal.records(self._store.clock())
        _LOG.warning(
            "the telemetry store restarted (epoch %s -> %s); writing the %d completion(s) of "
            "the last %g s again",
            self._epoch,
            epoch,
            len(records),
            self._journal.retention_s,
        )
        for start in range(0, len(records), _REPLAY_BATCH):
            batch = records[start : start + _REPLAY_BATCH]
            await asyncio.gather(*(self._store.record_completion(c) for c in batch))
            self._metrics.replayed.inc(len(batch))
        # Only a whole replay moves the epoch on: one cut short runs again (idempotently).
        self._metrics.store_resets.inc()
        self._epoch = epoch
        self.replayed += len(records)
        _LOG.info("replayed %d completion(s) into the restarted store", len(records))
        return len(records)

    async def run(self) -> None:
        """``check_store`` every ``interval_s`` until ``stop()``."""
        while not self._stopping.is_set():
            try:
                await self.check_store()
            except TelemetryError as error:  # the store is down: upkeep reports it
                _LOG.debug("cannot check the store's epoch: %s", error)
            except Exception:  # whatever the client raised: the books must keep being kept
                _LOG.exception("checking the store's epoch failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)

    def stop(self) -> None:
        self._stopping.set()


def build_books(
    store: TelemetryStore,
    settings: TelemetrySettings,
    registry: CollectorRegistry | None = None,
) -> CompletionBooks:
    """Books on ``store`` with the journal and check interval of ``settings``; metrics in
    ``registry`` (default: a private one)."""
    journal = CompletionJournal(
        cap=settings.replay_journal_cap, retention_s=settings.replay_journal_s
    )
    metrics = BooksMetrics(registry if registry is not None else CollectorRegistry())
    return CompletionBooks(store, journal, metrics, interval_s=settings.upkeep_interval_s)
