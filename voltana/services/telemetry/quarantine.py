"""Records a store read back but cannot use: skipped, counted, logged once, left for repair.

Redis is shared and outlives every telemetry version, so what telemetry reads back is checked
as strictly as what it accepts over gRPC. One bad record (a bogus phase, a key of the wrong
Redis type, a non-JSON completion, a garbage ``seen`` time) used to fail every snapshot or
aggregate of the whole cluster; now the reader skips it and notes it here, and telemetry's
upkeep repairs or drops it (``RedisTelemetryStore.heal``).
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from voltana.text import shorten

_LOG = logging.getLogger(__name__)


class RecordKind(enum.StrEnum):
    """Every kind of key the Redis store keeps (redis_store.py lists the layout)."""

    INSTANCES = "instances"
    INFO = "info"
    STATE = "state"
    GPU = "gpu"
    SERIES = "series"
    COMPLETIONS = "completions"
    COMPLETION_LOG = "completion_log"
    COMPLETION_IDS = "completion_ids"
    SEEN = "seen"


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A key (``member`` empty) or one member of it (set member, list item, sorted-set member,
    hash field or stream entry id) that cannot be used, and why."""

    kind: RecordKind
    key: str
    member: str = ""
    why: str = ""

    @property
    def where(self) -> tuple[RecordKind, str, str]:
        return self.kind, self.key, self.member


Listener = Callable[[BadRecord], None]


class Quarantine:
    """Bad records found and not repaired yet. A record is counted and logged when it is found
    (not again on every read that skips it, until it was repaired)."""

    def __init__(self) -> None:
        self._pending: dict[tuple[RecordKind, str, str], BadRecord] = {}
        self.found: Counter[RecordKind] = Counter()
        self.repaired: Counter[RecordKind] = Counter()
        self._on_found: list[Listener] = []
        self._on_repaired: list[Listener] = []

    def listen(self, *, found: Listener, repaired: Listener) -> None:
        """Call ``found`` with each newly found bad record, ``repaired`` with each repaired
        one (metrics)."""
        self._on_found.append(found)
        self._on_repaired.append(repaired)

    def note(self, record: BadRecord) -> None:
        if record.where in self._pending:
            return
        self._pending[record.where] = record
        self.found[record.kind] += 1
        member = f" member {shorten(record.member)}" if record.member else ""
        _LOG.warning(
            "telemetry store: skipping bad %s record %s%s (%s); upkeep will repair or drop it",
            record.kind.value,
            shorten(record.key),
            member,
            record.why,
        )
        for listener in self._on_found:
            listener(record)

    def pending(self) -> list[BadRecord]:
        return list(self._pending.values())

    def resolved(self, record: BadRecord) -> None:
        """``record`` was repaired (or dropped, or found good again)."""
        if self._pending.pop(record.where, None) is not None:
            self.repaired[record.kind] += 1
            for listener in self._on_repaired:
                listener(record)
