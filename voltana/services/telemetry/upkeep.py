"""Telemetry's background upkeep: tell health checkers whether the store works, and expire
instances that went silent.

An instance is alive while it registers or reports load (the store records when it last did,
``TelemetryStore.last_seen``). One silent for ``instance_ttl_s`` is unregistered, so routers
and controllers stop seeing it; if it was only cut off, its reporter registers it again on
the first sample telemetry rejects. Silence is only counted while the store works: after a
store outage every instance gets a full TTL to report again before it can expire.

With a ``heal`` step (the Redis store's repair, redis_repair.py) each check also reads every
kind of record back and repairs or drops the bad ones; the store counts as working only when
that read succeeds, so health is NOT_SERVING while telemetry cannot read its store, not only
while Redis refuses a PING. A check that takes longer than ``check_timeout_s`` (a Redis that
hangs) counts as a failure too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from voltana.services.telemetry.errors import TelemetryError, TelemetryStoreAuthError
from voltana.services.telemetry.store import TelemetryStore

_LOG = logging.getLogger(__name__)

# Called with True when the store works (again), False when it stopped working.
HealthListener = Callable[[bool], Awaitable[None]]
# Unregisters one instance; True when it was registered.
Forget = Callable[[str], Awaitable[bool]]
# Hears of a failure no retry heals (Redis refused the credentials); the upkeep then ends.
FatalListener = Callable[[TelemetryError], None]
# Reads every kind of record back and repairs the bad ones; how many it repaired.
Heal = Callable[[], Awaitable[int]]


class TelemetryUpkeep:
    def __init__(
        self,
        store: TelemetryStore,
        *,
        forget: Forget,
        on_health: HealthListener,
        interval_s: float,
        instance_ttl_s: float,
        on_fatal: FatalListener | None = None,
        heal: Heal | None = None,
        check_timeout_s: float = 5.0,
    ) -> None:
        self._store = store
        self._forget = forget
        self._on_fatal = on_fatal
        self._heal = heal
        self._check_timeout_s = check_timeout_s
        self.repaired = 0
        self._on_health = on_health
        self._interval_s = interval_s
        self._instance_ttl_s = instance_ttl_s
        self._healthy: bool | None = None
        # Store-clock time since which the store has worked without interruption.
        self._store_up_since_s: float | None = None
        self._stopping = asyncio.Event()
        self.expired: list[str] = []

    @property
    def healthy(self) -> bool | None:
        """Whether the store worked at the last check (None before the first)."""
        return self._healthy

    async def run(self) -> None:
        """Check every ``interval_s`` until ``stop()`` (or cancelled)."""
        while not self._stopping.is_set():
            await self.check_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)

    def stop(self) -> None:
        """End ``run`` at its next step. Cancelling alone is not enough: the Redis client can
        swallow a cancellation that lands inside one of its calls."""
        self._stopping.set()

    async def check_once(self) -> None:
        try:
            # A store that hangs (a stopped Redis) must not leave health SERVING forever.
            async with asyncio.timeout(self._check_timeout_s):
                await self._store.ping()
                if self._heal is not None:
                    self.repaired += await self._heal()
        except TelemetryStoreAuthError as error:
            if self._on_fatal is None:
                await self._set_healthy(False, str(error))
                return
            self._stopping.set()  # waiting would not bring the password back
            self._on_fatal(error)
            return
        except TelemetryError as error:
            await self._set_healthy(False, str(error))
            return
        except TimeoutError:
            why = f"the store did not answer within {self._check_timeout_s:g} s"
            await self._set_healthy(False, why)
            return
        await self._set_healthy(True, "")
        if self._instance_ttl_s > 0:
            try:
                await self._expire_silent()
            except TelemetryError as error:
                _LOG.warning("could not check for silent instances: %s", error)

    async def _set_healthy(self, healthy: bool, why: str) -> None:
        if healthy == self._healthy:
            return
        if healthy:
            self._store_up_since_s = self._store.clock()
            if self._healthy is not None:
                _LOG.info("telemetry store works again; serving")
        else:
            self._store_up_since_s = None
            _LOG.warning("telemetry store unavailable (%s); health NOT_SERVING", why)
        self._healthy = healthy
        await self._on_health(healthy)

    async def _expire_silent(self) -> None:
        assert self._store_up_since_s is not None
        now_s = self._store.clock()
        for instance_id, seen_s in (await self._store.last_seen()).items():
            silent_s = now_s - max(seen_s, self._store_up_since_s)
            if silent_s <= self._instance_ttl_s:
                continue
            if await self._forget(instance_id):
                self.expired.append(instance_id)
                _LOG.warning(
                    "instance %s expired: nothing heard of it for %.1f s (TTL %.1f s)",
                    instance_id,
                    now_s - seen_s,
                    self._instance_ttl_s,
                )
