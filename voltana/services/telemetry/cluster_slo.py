"""The cluster SLO's one home: telemetry's store.

Router, controller and telemetry each used to hold the SLO they were started with, and the
controller's SetSlo changed only its own copy. Now the store holds it: telemetry seeds it from
its own configuration when the store has none, SetClusterSlo (what the controller's SetSlo
calls) changes it, and every snapshot carries it to the routers and controllers, which follow
it. Telemetry processes sharing one store read it back on each upkeep round; a store that lost
it (restarted empty) or holds garbage there is written the SLO in force again.
"""

from __future__ import annotations

import logging

from voltana.contract.state import SloTarget
from voltana.services.telemetry.store import TelemetryStore

_LOG = logging.getLogger(__name__)


class ClusterSloKeeper:
    def __init__(self, store: TelemetryStore, configured: SloTarget) -> None:
        self._store = store
        self._current = configured

    @property
    def current(self) -> SloTarget:
        return self._current

    async def load(self) -> None:
        """At start: the stored SLO if there is one, else the configured one, stored."""
        stored = await self._store.cluster_slo()
        if stored is None:
            await self._store.put_cluster_slo(self._current)
            return
        if stored != self._current:
            _LOG.info(
                "cluster SLO from the store: TTFT %g ms, ITL %g ms (configured: TTFT %g ms, "
                "ITL %g ms; a SetSlo made since the store was seeded wins)",
                stored.ttft_ms,
                stored.itl_ms,
                self._current.ttft_ms,
                self._current.itl_ms,
            )
        self._adopt(stored)

    async def set(self, slo: SloTarget) -> SloTarget:
        """Change the cluster SLO (stored first: one the store did not take is not in force);
        returns the previous one."""
        await self._store.put_cluster_slo(slo)
        previous = self._current
        self._adopt(slo)
        return previous

    async def refresh(self) -> None:
        """Follow a change another telemetry process made; write the SLO back where the store
        lost it."""
        stored = await self._store.cluster_slo()
        if stored is None:
            await self._store.put_cluster_slo(self._current)
        else:
            self._adopt(stored)

    def _adopt(self, slo: SloTarget) -> None:
        if slo != self._current:
            self._current = slo
            self._store.changes.changed()  # snapshot watches send the new SLO
