"""Engine health as the router sees it: which instances get no traffic, and when they get it
back.

Passive: a call that cannot reach an engine (connection refused or lost, HTTP 503, an abort
while it shuts down) ejects its instance at once, so the next request already goes elsewhere.
Active: every ``interval_s`` each known engine's ``GET /health`` is probed; ``unhealthy_after``
failures in a row eject it, and an ejected instance is readmitted after ``healthy_after``
passes in a row. Telemetry's registrations decide which instances exist; this only keeps
traffic away from the ones whose engine does not answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from voltana.services.router.cluster import LiveCluster

_LOG = logging.getLogger(__name__)

# Answers whether the engine at this base URL is healthy (SglangHttpClient.health).
Probe = Callable[[str], Awaitable[bool]]


class EngineHealth:
    def __init__(
        self,
        cluster: LiveCluster,
        probe: Probe,
        *,
        interval_s: float,
        unhealthy_after: int,
        healthy_after: int,
    ) -> None:
        self._cluster = cluster
        self._probe = probe
        self._interval_s = interval_s
        self._unhealthy_after = unhealthy_after
        self._healthy_after = healthy_after
        # Consecutive probe results per instance: failures while admitted, passes while ejected.
        self._streaks: dict[str, int] = {}
        self._probed_urls: dict[str, str] = {}
        self.ejections = 0
        self.readmissions = 0

    def report_failure(self, instance_id: str, reason: str) -> None:
        """A call to the instance's engine failed in a way that says it is down."""
        if self._cluster.eject(instance_id, reason):
            self.ejections += 1
            self._streaks[instance_id] = 0
            _LOG.warning("engine of %s ejected from routing: %s", instance_id, reason)

    async def run(self) -> None:
        """Probe every ``interval_s`` until cancelled."""
        while True:
            await self.probe_once()
            await asyncio.sleep(self._interval_s)

    async def probe_once(self) -> None:
        endpoints = {
            instance_id: info.engine_url
            for instance_id, info in self._cluster.endpoints.items()
            if info.engine_url
        }
        for instance_id in list(self._streaks):
            if endpoints.get(instance_id) != self._probed_urls.get(instance_id):
                # Gone, or re-registered at another address: start over.
                self._streaks.pop(instance_id, None)
                self._probed_urls.pop(instance_id, None)
        for instance_id in list(self._cluster.ejected):
            if instance_id not in endpoints:
                self._cluster.readmit(instance_id)  # unregistered: nothing left to keep out
        ids = sorted(endpoints)
        results = await asyncio.gather(*(self._probe(endpoints[i]) for i in ids))
        for instance_id, healthy in zip(ids, results, strict=True):
            self._probed_urls[instance_id] = endpoints[instance_id]
            self._record(instance_id, healthy)

    def _record(self, instance_id: str, healthy: bool) -> None:
        ejected = instance_id in self._cluster.ejected
        # A result that argues for a change of state lengthens the streak; any other ends it.
        streak = self._streaks.get(instance_id, 0) + 1 if ejected == healthy else 0
        self._streaks[instance_id] = streak
        if ejected and streak >= self._healthy_after:
            self._cluster.readmit(instance_id)
            self._streaks[instance_id] = 0
            self.readmissions += 1
            _LOG.info("engine of %s passes its health checks again; routing to it", instance_id)
        elif not ejected and streak >= self._unhealthy_after:
            self.report_failure(instance_id, f"GET /health failed {streak} times in a row")
