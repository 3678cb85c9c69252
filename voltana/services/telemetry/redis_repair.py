"""Upkeep's repair of what the Redis store quarantined (quarantine.py).

Each round reads every kind of key once more (which quarantines what cannot be used), then
repairs or drops each quarantined record:

- instances set: a bad member is removed; a key of another type is rebuilt from the
  instances' own keys;
- registration, state, GPU hashes: dropped when still bad (a good write may have replaced
  them meanwhile). A dropped registration makes the instance unknown, so its reporter
  registers it again on its next rejected sample; a dropped state or GPU reading is replaced
  by the next report;
- series: the bad point is removed; a key of another type is dropped;
- completions: a bad member is removed; a key of another type is written back from this
  process's mirror of the completions (dropped when it has none); a bad completion-log entry
  or log is removed, and the completions are reloaded from the sorted set; the record ids
  (what keeps a retried or replayed completion from counting twice), when of another type,
  are written back from the mirror's completions;
- seen: a bad time is replaced by the store's clock (the instance gets a full TTL from now, so
  a silent one still expires); a key of another type is rebuilt the same way for every
  registered instance.

A slow sweep checks the completions too (a few hundred members a round, by cursor): aggregates
read only the completion log, so a member written straight into the sorted set would otherwise
never be looked at.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError, ResponseError

from voltana.contract.instances import InstanceInfo
from voltana.contract.state import InstanceState
from voltana.services.telemetry.codec import encode_json
from voltana.services.telemetry.errors import CorruptTelemetryError, TelemetryStoreError
from voltana.services.telemetry.quarantine import BadRecord, RecordKind
from voltana.services.telemetry.records import GpuReading
from voltana.services.telemetry.redis_io import decode_completion, is_wrong_type
from voltana.services.telemetry.redis_store import RedisTelemetryStore
from voltana.services.telemetry.validate import (
    validate_gpu_sample,
    validate_instance_info,
    validate_instance_state,
)

# Completions checked per upkeep round by the sweep.
SWEEP_COMPLETIONS_PER_ROUND = 500

_EXPECTED_TYPES = {
    RecordKind.INSTANCES: "set",
    RecordKind.SEEN: "hash",
    RecordKind.COMPLETIONS: "zset",
    RecordKind.COMPLETION_LOG: "stream",
    RecordKind.COMPLETION_IDS: "zset",
}
_HASHES: dict[RecordKind, tuple[type[Any], Any]] = {
    RecordKind.INFO: (InstanceInfo, validate_instance_info),
    RecordKind.STATE: (InstanceState, validate_instance_state),
    RecordKind.GPU: (GpuReading, validate_gpu_sample),
}


class RedisRepair:
    """Finds and repairs bad records of one Redis store (``heal`` once per upkeep round)."""

    def __init__(self, store: RedisTelemetryStore) -> None:
        self._store = store
        self._sweep_cursor = 0

    def _keys(self) -> dict[RecordKind, str]:
        store = self._store
        return {
            RecordKind.INSTANCES: store.instances_key(),
            RecordKind.SEEN: store.seen_key(),
            RecordKind.COMPLETIONS: store.completions_key(),
            RecordKind.COMPLETION_LOG: store.completion_log_key(),
            RecordKind.COMPLETION_IDS: store.completion_ids_key(),
        }

    async def heal(self) -> int:
        """Look for bad records and repair what is quarantined; how many were repaired.

        Raises TelemetryStoreError when the store cannot be read (health turns NOT_SERVING).
        """
        await self._check_types()
        await self._store.latest_states()
        await self._store.last_seen()
        await self._sweep_completions()
        repaired = 0
        for record in self._store.quarantine.pending():
            try:
                await self._repair(record)
            except ResponseError as exc:
                if not is_wrong_type(exc):
                    raise TelemetryStoreError(
                        f"redis failed to repair {record.key}: {exc}"
                    ) from exc
                # The key changed type since (a member's key): the type check quarantines the
                # key itself, and its repair covers the member.
            except RedisError as exc:
                raise TelemetryStoreError(f"redis failed to repair {record.key}: {exc}") from exc
            self._store.quarantine.resolved(record)
            repaired += 1
        return repaired

    async def _check_types(self) -> None:
        keys = self._keys()
        redis = self._store.redis
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for key in keys.values():
                    pipe.type(key)
                types = await pipe.execute()
        except RedisError as exc:
            raise TelemetryStoreError(f"redis failed to check key types: {exc}") from exc
        for (kind, key), found in zip(keys.items(), types, strict=True):
            if found not in ("none", _EXPECTED_TYPES[kind]):
                expected = _EXPECTED_TYPES[kind]
                self._store.quarantine.note(
                    BadRecord(kind, key, why=f"a {found}, not a {expected}")
                )

    async def _sweep_completions(self) -> None:
        store = self._store
        key = store.completions_key()
        try:
            cursor, members = await store.redis.zscan(
                key, self._sweep_cursor, count=SWEEP_COMPLETIONS_PER_ROUND
            )
        except RedisError as exc:
            if is_wrong_type(exc):
                return  # the type check quarantined it
            raise TelemetryStoreError(f"redis failed to sweep completions: {exc}") from exc
        self._sweep_cursor = int(cursor)
        for raw, _score in members:
            text = str(raw)  # the client decodes replies (decode_responses=True)
            try:
                decode_completion(text)
            except CorruptTelemetryError as exc:
                store.quarantine.note(BadRecord(RecordKind.COMPLETIONS, key, text, str(exc)))

    async def _repair(self, record: BadRecord) -> None:
        store, redis, key = self._store, self._store.redis, record.key
        kind, member = record.kind, record.member
        if kind in _HASHES:
            # Dropped only if still bad: a report may have replaced it since it was read.
            cls, validate = _HASHES[kind]
            instance_id = key.removeprefix(store.key_prefix).partition(":")[2]
            try:
                reply: Any = await redis.hgetall(key)
            except ResponseError as exc:
                if not is_wrong_type(exc):
                    raise
                reply = exc
            if reply and store.decode_record(kind, key, instance_id, reply, cls, validate) is None:
                await redis.delete(key)
            return
        if kind is RecordKind.INSTANCES:
            if member:
                await redis.srem(key, member)
                return
            ids = await store.scan_instance_ids()
            async with redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if ids:
                    pipe.sadd(key, *ids)
                await pipe.execute()
            return
        if kind is RecordKind.SERIES:
            await (redis.lrem(key, 0, member) if member else redis.delete(key))
            return
        if kind is RecordKind.COMPLETIONS:
            if member:
                await redis.zrem(key, member)
                return
            # Written back from this process's mirror (empty if it never read them).
            mirrored = {encode_json(c): c.finished_at_s for c in store.mirrored_completions()}
            async with redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if mirrored:
                    pipe.zadd(key, mirrored)
                await pipe.execute()
            return
        if kind is RecordKind.COMPLETION_IDS:
            record_ids = {
                c.record_id: c.finished_at_s for c in store.mirrored_completions() if c.record_id
            }
            async with redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if record_ids:
                    pipe.zadd(key, record_ids)
                await pipe.execute()
            return
        if kind is RecordKind.COMPLETION_LOG:
            await (redis.xdel(key, member) if member else redis.delete(key))
            store.forget_completions()
            return
        await self._repair_seen(record)

    async def _repair_seen(self, record: BadRecord) -> None:
        store, redis = self._store, self._store.redis
        now_text = repr(store.clock())
        if record.member:
            current = await redis.hget(record.key, record.member)
            if current is not None and store.seen_problem(str(current)) is not None:
                await redis.hset(record.key, record.member, now_text)
            return
        registered = store.valid_ids(await redis.smembers(store.instances_key()))
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(record.key)
            if registered:
                pipe.hset(record.key, mapping=dict.fromkeys(registered, now_text))
            await pipe.execute()
