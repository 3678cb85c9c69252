"""Snapshot reads shared by every GetSnapshot call and watch stream.

The store is read at most once per change (its ``changes`` version), however many watchers
there are; filters are applied to the shared copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from voltana.contract.instances import InstanceInfo
from voltana.contract.state import InstanceState, Phase
from voltana.services.telemetry.store import TelemetryStore


@dataclass(frozen=True)
class ClusterView:
    states: Mapping[str, InstanceState]
    infos: Mapping[str, InstanceInfo]

    def select(self, phase: Phase | None, instance_ids: Collection[str]) -> ClusterView:
        """Instances of ``phase`` (None = any) among ``instance_ids`` (empty = all)."""
        wanted = set(instance_ids)
        return ClusterView(
            states={
                i: s
                for i, s in self.states.items()
                if (phase is None or s.phase is phase) and (not wanted or i in wanted)
            },
            infos=self.infos,
        )


class SnapshotCache:
    def __init__(self, store: TelemetryStore) -> None:
        self._store = store
        self._lock = asyncio.Lock()
        self._version: int | None = None
        self._view = ClusterView({}, {})

    async def read(self) -> ClusterView:
        async with self._lock:
            # Read the version first: a write during the read makes the next call reread.
            version = self._store.changes.version
            if version != self._version:
                states = await self._store.latest_states()
                infos = await self._store.instance_infos()
                self._view = ClusterView(states, infos)
                self._version = version
            return self._view
