"""Keeping one instance registered with telemetry, whatever happens to telemetry.

Telemetry can forget an instance: Redis restarted empty, telemetry (in-memory) restarted,
someone called UnregisterInstance, or the instance was silent past telemetry's TTL. Its load
reports are then rejected with the instance named as unknown; the reporter calls ``lost()``
and this registers it again (retrying while telemetry is down). The load reports themselves
are the heartbeat: an instance whose reports stop expires in telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from voltana.errors import NotFoundError, VoltanaError
from voltana.lifecycle import cancel_and_wait
from voltana.services.telemetry import InstanceInfo, TelemetryClient

_LOG = logging.getLogger(__name__)
DEFAULT_RETRY_S = 0.5


class InstanceRegistration:
    """Registers ``info()`` with telemetry and again whenever telemetry lost it.

    ``register()`` once at start (raises when telemetry refuses), then ``start()`` the
    background re-registration; ``stop(unregister=True)`` ends it and unregisters.
    """

    def __init__(
        self,
        client: TelemetryClient,
        info: Callable[[], InstanceInfo],
        *,
        retry_s: float = DEFAULT_RETRY_S,
    ) -> None:
        self._client = client
        self._info = info
        self._retry_s = retry_s
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.registered = False
        # Times telemetry had lost the instance and it was registered again.
        self.reregistrations = 0

    @property
    def instance_id(self) -> str:
        return self._info().instance_id

    async def register(self) -> None:
        await self._client.register_instance(self._info())
        self.registered = True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"registration-{self.instance_id}")

    def lost(self) -> None:
        """Telemetry does not know the instance (any more): register it again soon."""
        if self.registered:
            self._lost.set()

    def note_report(self, unknown_instance_ids: tuple[str, ...]) -> None:
        """Look at what telemetry said of a load report; re-register when it named us."""
        if unknown_instance_ids and self.instance_id in unknown_instance_ids:
            self.lost()

    async def _run(self) -> None:
        failing = False
        while True:
            await self._lost.wait()
            try:
                created = await self._client.register_instance(self._info())
            except VoltanaError as error:
                if not failing:
                    _LOG.warning("cannot register %s again yet: %s", self.instance_id, error)
                failing = True
                await asyncio.sleep(self._retry_s)
                continue
            self._lost.clear()
            failing = False
            if created:
                self.reregistrations += 1
                _LOG.info("telemetry had lost %s; registered it again", self.instance_id)

    async def stop(self, *, unregister: bool = True) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task])
        if unregister and self.registered:
            instance_id = self.instance_id
            with contextlib.suppress(NotFoundError):
                try:
                    await self._client.unregister_instance(instance_id)
                except VoltanaError as error:
                    _LOG.warning("could not unregister %s: %s", instance_id, error)
        self.registered = False
