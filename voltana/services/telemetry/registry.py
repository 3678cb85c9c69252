"""Which instances are registered, cached in process so samples need no store read."""

from __future__ import annotations

from voltana.contract.instances import InstanceInfo
from voltana.services.telemetry.store import TelemetryStore


class InstanceRegistry:
    """Registrations by instance id and by GPU (agent address, GPU index).

    Writes go through here to the store. Lookups reread the store at most every ``refresh_s``
    (by the store's clock): to pick up registrations made by another process sharing the
    store, and to notice registrations the store lost (Redis restarted empty, an expiry), so
    that samples of such instances are rejected as unknown and their reporters register again.
    """

    def __init__(self, store: TelemetryStore, *, refresh_s: float) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._infos: dict[str, InstanceInfo] = {}
        self._by_gpu: dict[tuple[str, int], str] = {}
        self._loaded_at_s: float | None = None

    async def register(self, info: InstanceInfo) -> bool:
        created = await self._store.register_instance(info)
        self._forget_cached(info.instance_id)
        self._remember(info)
        return created

    async def unregister(self, instance_id: str) -> bool:
        registered = await self._store.unregister_instance(instance_id)
        self._forget_cached(instance_id)
        return registered

    async def count_without(self, instance_id: str) -> int:
        """How many instances other than ``instance_id`` are registered: from the store, unless
        this one is known here (re-registering an instance never adds one)."""
        if instance_id in self._infos:
            return len(self._infos) - 1
        infos = await self._store.instance_infos()
        return len(infos) - (instance_id in infos)

    async def get(self, instance_id: str) -> InstanceInfo | None:
        await self._reload_if_due()
        return self._infos.get(instance_id)

    async def on_gpu(self, agent_address: str, gpu_index: int) -> InstanceInfo | None:
        """The instance registered on that GPU of that node agent, if any."""
        await self._reload_if_due()
        instance_id = self._by_gpu.get((agent_address, gpu_index))
        return None if instance_id is None else self._infos.get(instance_id)

    async def _reload_if_due(self) -> bool:
        now_s = self._store.clock()
        if self._loaded_at_s is not None and now_s - self._loaded_at_s < self._refresh_s:
            return False
        # Stamped only once read: while the store is down every lookup tries again, so the
        # first one after it comes back (maybe empty) sees what it holds.
        infos = await self._store.instance_infos()
        self._loaded_at_s = now_s
        self._infos.clear()
        self._by_gpu.clear()
        for info in infos.values():
            self._remember(info)
        return True

    def _remember(self, info: InstanceInfo) -> None:
        self._infos[info.instance_id] = info
        for ref in info.gpu_refs:  # every GPU of a tensor-parallel instance
            self._by_gpu[ref.agent_address, ref.gpu_index] = info.instance_id

    def _forget_cached(self, instance_id: str) -> None:
        old = self._infos.pop(instance_id, None)
        if old is None:
            return
        for ref in old.gpu_refs:
            if self._by_gpu.get((ref.agent_address, ref.gpu_index)) == instance_id:
                del self._by_gpu[ref.agent_address, ref.gpu_index]
