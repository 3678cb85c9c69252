"""The Redis store's completions, mirrored in process memory with their running windows.

The store keeps every completion twice: in a sorted set by finish time (what a process reads
all of once, at start) and in the ``completion_log`` stream in the order they were recorded
(what it reads the news from on each aggregate: only the entries added since its last read,
by the stream's entries-added count). A completion recorded by any telemetry process sharing
the store, late or replayed, so reaches every mirror once (``CompletionIndex`` keeps each
record once). When the log was cut past what a process read (trimmed, deleted, replaced) or
holds a long backlog, it reads the sorted set again.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from voltana.services.telemetry.completion_index import CompletionIndex
from voltana.services.telemetry.errors import CorruptTelemetryError
from voltana.services.telemetry.quarantine import BadRecord, Quarantine, RecordKind
from voltana.services.telemetry.records import Completion
from voltana.services.telemetry.redis_io import decode_completion, is_wrong_type, run_pipeline

# Stream field of a completion in the completion log.
LOG_FIELD = "c"
# Completions decoded between two yields to the event loop.
DECODE_BATCH = 1000
# More new log entries than this are caught up by reading the sorted set again (one flat
# reply a page) instead of the log (a nested reply per entry).
RELOAD_BEYOND = 5000
# Completions read per page of a reload (each page one short command).
RELOAD_PAGE = 5000


def _log_position(info: Any) -> tuple[int, str]:
    """(entries ever added, last id) of the completion log, from XINFO STREAM."""
    if isinstance(info, ResponseError):  # "no such key": nothing logged yet
        return 0, "0-0"
    # Redis 6 has no entries-added: the length serves while nothing was trimmed.
    added = info.get("entries-added", info.get("length", 0))
    return int(added), str(info["last-generated-id"])


class CompletionMirror:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        completions_key: str,
        log_key: str,
        cap: int,
        quarantine: Quarantine,
        reload_page: int = RELOAD_PAGE,
    ) -> None:
        self._redis = redis
        self._key = completions_key
        self._log_key = log_key
        self._cap = cap
        self._quarantine = quarantine
        self._reload_page = reload_page
        self.index = CompletionIndex(cap)
        # The log's entries-added count the mirror is up to date with (None: not read yet).
        self._log_added: int | None = None
        self._log_last_id = "0-0"
        # Set by ``forget`` (the upkeep, maybe while a sync is under way).
        self._reload_wanted = False
        self._lock = asyncio.Lock()

    def completions(self) -> list[Completion]:
        """The completions as last read (empty until they were)."""
        return list(self.index.finished_between(-math.inf, math.inf))

    def forget(self) -> None:
        """Read everything again at the next sync (the keys changed; until then a report in
        progress keeps the mirror it has)."""
        self._reload_wanted = True

    def _note(self, kind: RecordKind, key: str, why: str, member: str = "") -> None:
        self._quarantine.note(BadRecord(kind, key, member, why))

    async def _run(self, action: str, queue: Callable[[Any], None]) -> list[Any]:
        return await run_pipeline(self._redis, action, queue)

    async def _decoded(
        self, kind: RecordKind, key: str, items: Iterable[tuple[str, str]]
    ) -> list[Completion]:
        """The (member, JSON text) pairs that decode and validate, the others quarantined.
        Yields to the event loop now and then: a reload decodes up to the completions cap,
        and snapshots must not wait for it."""
        completions = []
        for count, (member, text) in enumerate(items, 1):
            try:
                completions.append(decode_completion(text))
            except CorruptTelemetryError as exc:
                self._note(kind, key, str(exc), member)
            if count % DECODE_BATCH == 0:
                await asyncio.sleep(0)
        return completions

    def _queue_page(self, low_s: float, skip: int, pipe: Any) -> None:
        """Completions scored ``low_s`` or more, after the first ``skip`` of them."""
        pipe.zrangebyscore(
            self._key, low_s, "+inf", start=skip, num=self._reload_page, withscores=True
        )

    async def _reload(self) -> None:
        """Read every stored completion again.

        The log position is read first, then the sorted set page by page (by score, so pages
        stay right while completions are added or trimmed meanwhile): what was recorded after
        the position is read again from the log at the next sync, and counted once.
        """
        log_key, key = self._log_key, self._key
        (info,) = await self._run("read the completion log", lambda p: p.xinfo_stream(log_key))
        if is_wrong_type(info):
            self._note(RecordKind.COMPLETION_LOG, log_key, "not a stream")
            info = ResponseError("no such key")
        fresh = CompletionIndex(self._cap)
        low_s, taken_at_low = -math.inf, 0
        while True:
            (page,) = await self._run(
                "read completions", functools.partial(self._queue_page, low_s, taken_at_low)
            )
            if is_wrong_type(page):
                self._note(RecordKind.COMPLETIONS, key, "not a sorted set")
                break
            members = [(str(member), str(member)) for member, _ in page]  # a member is its JSON
            fresh.add_all(await self._decoded(RecordKind.COMPLETIONS, key, members))
            if len(page) < self._reload_page:
                break
            last_s = float(page[-1][1])
            at_last = sum(1 for _, score in page if float(score) == last_s)
            taken_at_low = taken_at_low + at_last if last_s == low_s else at_last
            low_s = last_s
        self.index = fresh
        self._log_added, self._log_last_id = _log_position(info)

    async def sync(self) -> None:
        """Bring the mirror up to date: only what was logged since the last call is read."""
        async with self._lock:  # concurrent aggregates read the log once
            await self._sync()

    async def _sync(self) -> None:
        known = self._log_added
        if known is None or self._reload_wanted:
            self._reload_wanted = False  # a forget while reloading asks for another one
            await self._reload()
            return
        log_key, last_id = self._log_key, self._log_last_id

        def queue(pipe: Any) -> None:
            pipe.xinfo_stream(log_key)
            # The last entry this process read: gone means the log was replaced (a Redis that
            # restarted empty: its entries-added count starts again) or trimmed past it.
            pipe.xrange(log_key, min=last_id, max=last_id, count=1)

        info, last = await self._run("read the completion log", queue)
        if is_wrong_type(info):
            self._note(RecordKind.COMPLETION_LOG, log_key, "not a stream")
            return  # serve what is mirrored until upkeep repairs it
        added, _ = _log_position(info)
        new = added - known
        replaced = known > 0 and not is_wrong_type(last) and not last
        if replaced or new < 0 or new > RELOAD_BEYOND:  # replaced, or a long backlog
            await self._reload()
            return
        if new == 0:
            return
        (entries,) = await self._run(
            "read the completion log",
            lambda p: p.xrange(log_key, min=f"({self._log_last_id}", max="+", count=new),
        )
        if is_wrong_type(entries) or len(entries) < new:
            # Trimmed (or entries deleted) past what this process read: start over.
            await self._reload()
            return
        logged = ((entry_id, fields.get(LOG_FIELD, "")) for entry_id, fields in entries)
        self.index.add_all(await self._decoded(RecordKind.COMPLETION_LOG, log_key, logged))
        self._log_added, self._log_last_id = added, entries[-1][0]
