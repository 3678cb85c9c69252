"""The shared store: state, series and completions in Redis, one round-trip per write.

Key layout (``prefix`` defaults to ``voltana:``):

- ``{prefix}instances``                 set of every instance id the store has heard of
                                        (until it is unregistered)
- ``{prefix}info:{id}``                 hash, the instance's registration (``InstanceInfo``)
- ``{prefix}state:{id}``                hash, its latest load report (``InstanceState``)
- ``{prefix}gpu:{id}``                  hash, its latest GPU sample
- ``{prefix}series:{id}:{metric}``      list of ``"<ts_s> <value>"``, capped with LTRIM
- ``{prefix}completions``               sorted set of JSON completions scored by finish time,
                                        capped by rank (a record reported twice is kept once)
- ``{prefix}completion_ids``            sorted set of the record ids stored there, same scores,
                                        capped at twice the completions: a record id arriving
                                        again (a retry, a replay) is not stored twice
- ``{prefix}seen``                      hash, instance id → when it last registered or reported
                                        load (store clock); silent instances expire by it
- ``{prefix}epoch``                     a random marker, only where INFO is not allowed: a
                                        restart that lost it shows as a new epoch (``epoch``)

Registration, load and GPU data stay in separate hashes and are merged on read (see
``merge.py``), so no write has to read first.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from voltana.policy.state import InstanceState, SloTarget
from voltana.services.telemetry.codec import decode_fields, decode_json, encode_fields, encode_json
from voltana.services.telemetry.errors import (
    CorruptTelemetryError,
    TelemetryStoreAuthError,
    TelemetryStoreError,
)
from voltana.services.telemetry.merge import (
    gpu_metric_values,
    load_metric_values,
    merge_state,
    stamp_state,
)
from voltana.services.telemetry.records import (
    Aggregates,
    Completion,
    GpuReading,
    InstanceInfo,
    Metric,
    SeriesPoint,
    WindowReport,
)
from voltana.services.telemetry.store import (
    DEFAULT_COMPLETIONS_CAP,
    DEFAULT_SERIES_CAP,
    DEFAULT_SLO,
    ChangeNotifier,
    Clock,
    parse_metric,
)
from voltana.services.telemetry.validate import (
    validate_completion,
    validate_gpu_sample,
    validate_instance_info,
    validate_instance_state,
    validate_window,
)
from voltana.services.telemetry.window import compute_window_report

DEFAULT_KEY_PREFIX = "voltana:"

# Stores a completion unless its record id (ARGV[3], "" = none) is already known; one atomic
# step, so a retry racing a replay counts once. Ids are kept twice as long as the records (an
# id outlives its record, so a late duplicate cannot slip back in). Returns 1 when stored.
# KEYS: completions, completion ids; ARGV: member, score, record id, cap.
_RECORD_COMPLETION_LUA = """
local cap = tonumber(ARGV[4])
if ARGV[3] ~= '' then
  if redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[3]) == 0 then
    return 0
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -2 * cap - 1)
end
local added = redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -cap - 1)
return added
"""


# Replies of a Redis that wants other credentials (the connection's AUTH/HELLO refused, or a
# command sent without them).
_AUTH_REPLIES = ("NOAUTH", "WRONGPASS")


def _is_auth_error(exc: RedisError) -> bool:
    return isinstance(exc, AuthenticationError) or (
        isinstance(exc, ResponseError) and str(exc).startswith(_AUTH_REPLIES)
    )


@contextlib.contextmanager
def _store_errors(action: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        if _is_auth_error(exc):
            text = str(exc)
            # Redis 6+ answers a client without a password with a HELLO usage hint.
            why = "it wants a password" if text.startswith(("HELLO ", "NOAUTH")) else text
            raise TelemetryStoreAuthError(
                f"redis refused telemetry's credentials ({why}): check the password in "
                "--redis-url, $VOLTANA_REDIS_PASSWORD or --redis-password-file"
            ) from exc
        raise TelemetryStoreError(f"redis failed to {action}: {exc}") from exc


def _texts(replies: Iterable[bytes | str]) -> list[str]:
    # The client decodes replies (decode_responses=True); this only satisfies the types.
    return [r.decode() if isinstance(r, bytes) else r for r in replies]


def _decode_point(text: str) -> SeriesPoint:
    ts_text, _, value_text = text.partition(" ")
    try:
        return SeriesPoint(float(ts_text), float(value_text))
    except ValueError as exc:
        raise CorruptTelemetryError(f"cannot decode stored series point {text!r}") from exc


class RedisTelemetryStore:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        clock: Clock,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        series_cap: int = DEFAULT_SERIES_CAP,
        completions_cap: int = DEFAULT_COMPLETIONS_CAP,
        owns_client: bool = False,
    ) -> None:
        """``client`` must decode responses to ``str`` (``decode_responses=True``)."""
        self._redis = client
        self._clock = clock
        self._prefix = key_prefix
        self._series_cap = series_cap
        self._completions_cap = completions_cap
        self._owns_client = owns_client
        self._changes = ChangeNotifier()
        self._record_completion = client.register_script(_RECORD_COMPLETION_LUA)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        clock: Clock,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        series_cap: int = DEFAULT_SERIES_CAP,
        completions_cap: int = DEFAULT_COMPLETIONS_CAP,
        password: str | None = None,
    ) -> RedisTelemetryStore:
        """A store with its own connection pool (closed by ``close()``); connects lazily.

        ``password``: when the URL carries none (redis_url.py has the accepted forms).
        """
        client = (
            aioredis.Redis.from_url(url, decode_responses=True)
            if password is None
            else aioredis.Redis.from_url(url, decode_responses=True, password=password)
        )
        return cls(
            client,
            clock=clock,
            key_prefix=key_prefix,
            series_cap=series_cap,
            completions_cap=completions_cap,
            owns_client=True,
        )

    @property
    def changes(self) -> ChangeNotifier:
        return self._changes

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def key_prefix(self) -> str:
        return self._prefix

    # Key names, in one place so the layout in the module docstring stays true.
    def instances_key(self) -> str:
        return f"{self._prefix}instances"

    def info_key(self, instance_id: str) -> str:
        return f"{self._prefix}info:{instance_id}"

    def state_key(self, instance_id: str) -> str:
        return f"{self._prefix}state:{instance_id}"

    def gpu_key(self, instance_id: str) -> str:
        return f"{self._prefix}gpu:{instance_id}"

    def series_key(self, instance_id: str, metric: Metric) -> str:
        return f"{self._prefix}series:{instance_id}:{metric.value}"

    def completions_key(self) -> str:
        return f"{self._prefix}completions"

    def completion_ids_key(self) -> str:
        return f"{self._prefix}completion_ids"

    def seen_key(self) -> str:
        return f"{self._prefix}seen"

    def epoch_key(self) -> str:
        return f"{self._prefix}epoch"

    def _queue_points(
        self, pipe: Any, instance_id: str, ts_s: float, values: dict[Metric, float]
    ) -> None:
        for metric, value in values.items():
            key = self.series_key(instance_id, metric)
            pipe.rpush(key, f"{ts_s!r} {value!r}")
            pipe.ltrim(key, -self._series_cap, -1)

    async def _write_hash(
        self,
        instance_id: str,
        key: str,
        fields: Mapping[Any, Any],
        points: tuple[float, dict[Metric, float]] | None,
        *,
        seen: bool = False,
    ) -> bool:
        """Store one hash (and series points) in one transaction; True when the hash was new.

        ``seen``: the write is a sign of life of the instance (registration, load report).
        """
        with _store_errors(f"store {key}"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.exists(key)
                pipe.sadd(self.instances_key(), instance_id)
                # Replace, not merge: a field the new value lacks must not survive.
                pipe.delete(key)
                pipe.hset(key, mapping=fields)
                if seen:
                    pipe.hset(self.seen_key(), instance_id, repr(self._clock()))
                if points is not None:
                    self._queue_points(pipe, instance_id, *points)
                replies = await pipe.execute()
        self._changes.changed()
        return not replies[0]

    async def register_instance(self, info: InstanceInfo) -> bool:
        validate_instance_info(info)
        return await self._write_hash(
            info.instance_id, self.info_key(info.instance_id), encode_fields(info), None, seen=True
        )

    async def unregister_instance(self, instance_id: str) -> bool:
        with _store_errors(f"forget {instance_id}"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.exists(self.info_key(instance_id))
                pipe.srem(self.instances_key(), instance_id)
                pipe.hdel(self.seen_key(), instance_id)
                pipe.delete(
                    self.info_key(instance_id),
                    self.state_key(instance_id),
                    self.gpu_key(instance_id),
                    *(self.series_key(instance_id, metric) for metric in Metric),
                )
                replies = await pipe.execute()
        self._changes.changed()
        return bool(replies[0])

    async def put_instance_state(self, state: InstanceState) -> None:
        validate_instance_state(state)
        state = stamp_state(state, self._clock())
        await self._write_hash(
            state.instance_id,
            self.state_key(state.instance_id),
            encode_fields(state),
            (state.observed_at_s, load_metric_values(state)),
            seen=True,
        )

    async def put_gpu_sample(
        self,
        instance_id: str,
        ts_s: float,
        sm_clock_mhz: int,
        power_w: float,
        energy_j: float,
    ) -> None:
        # A reading without a time (0) is stamped on arrival, like load reports.
        ts_s = ts_s or self._clock()
        sample = GpuReading(instance_id, ts_s, sm_clock_mhz, power_w, energy_j)
        validate_gpu_sample(sample)
        await self._write_hash(
            instance_id,
            self.gpu_key(instance_id),
            encode_fields(sample),
            (ts_s, gpu_metric_values(sample)),
        )

    async def record_completion(self, completion: Completion) -> None:
        validate_completion(completion)
        with _store_errors("record a completion"):
            # Keeps the newest `completions_cap` entries (ranks ascend with finish time).
            await self._record_completion(
                keys=[self.completions_key(), self.completion_ids_key()],
                args=[
                    encode_json(completion),
                    repr(completion.finished_at_s),
                    completion.record_id,
                    self._completions_cap,
                ],
            )

    async def _instance_ids(self) -> list[str]:
        with _store_errors("list instances"):
            members = await self._redis.smembers(self.instances_key())
        return sorted(_texts(members))

    async def latest_states(self) -> dict[str, InstanceState]:
        instance_ids = await self._instance_ids()
        with _store_errors("read instance states"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for instance_id in instance_ids:
                    pipe.hgetall(self.info_key(instance_id))
                    pipe.hgetall(self.state_key(instance_id))
                    pipe.hgetall(self.gpu_key(instance_id))
                replies = await pipe.execute()
        states: dict[str, InstanceState] = {}
        for index, instance_id in enumerate(instance_ids):
            info_hash, state_hash, gpu_hash = replies[3 * index : 3 * index + 3]
            merged = merge_state(
                instance_id,
                decode_fields(InstanceInfo, info_hash) if info_hash else None,
                decode_fields(InstanceState, state_hash) if state_hash else None,
                decode_fields(GpuReading, gpu_hash) if gpu_hash else None,
            )
            if merged is not None:
                states[instance_id] = merged
        return states

    async def instance_infos(self) -> dict[str, InstanceInfo]:
        instance_ids = await self._instance_ids()
        with _store_errors("read instance registrations"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for instance_id in instance_ids:
                    pipe.hgetall(self.info_key(instance_id))
                replies = await pipe.execute()
        return {
            instance_id: decode_fields(InstanceInfo, reply)
            for instance_id, reply in zip(instance_ids, replies, strict=True)
            if reply
        }

    async def series(
        self, instance_id: str, metric: Metric | str, since_s: float = 0.0
    ) -> list[SeriesPoint]:
        key = self.series_key(instance_id, parse_metric(metric))
        with _store_errors(f"read {key}"):
            raw = await self._redis.lrange(key, 0, -1)
        points = [_decode_point(text) for text in _texts(raw)]
        return [p for p in points if p.ts_s >= since_s]

    async def window_report(
        self, instance_ids: Collection[str] | None, window_s: float, slo: SloTarget = DEFAULT_SLO
    ) -> WindowReport:
        validate_window(window_s)
        now_s = self._clock()
        ids = await self._instance_ids() if instance_ids is None else list(instance_ids)
        with _store_errors("read aggregates"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(self.completions_key(), f"({now_s - window_s!r}", repr(now_s))
                for instance_id in ids:
                    pipe.lrange(self.series_key(instance_id, Metric.ENERGY_J), 0, -1)
                    pipe.lrange(self.series_key(instance_id, Metric.SM_CLOCK_MHZ), 0, -1)
                completions_raw, *series_raw = await pipe.execute()

        def points(raw: Iterable[bytes | str]) -> list[SeriesPoint]:
            return [_decode_point(text) for text in _texts(raw)]

        return compute_window_report(
            instance_ids=ids,
            whole_cluster=instance_ids is None,
            window_s=window_s,
            now_s=now_s,
            completions=[decode_json(Completion, text) for text in _texts(completions_raw)],
            energy_series={i: points(series_raw[2 * n]) for n, i in enumerate(ids)},
            clock_series={i: points(series_raw[2 * n + 1]) for n, i in enumerate(ids)},
            slo=slo,
        )

    async def aggregates(
        self, instance_id: str | None, window_s: float, slo: SloTarget = DEFAULT_SLO
    ) -> Aggregates:
        if instance_id is None:
            return (await self.window_report(None, window_s, slo)).cluster
        return (await self.window_report([instance_id], window_s, slo)).instances[instance_id]

    async def last_seen(self) -> dict[str, float]:
        with _store_errors("read when instances were last seen"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.smembers(self.instances_key())
                pipe.hgetall(self.seen_key())
                members, seen = await pipe.execute()
        registered = set(_texts(members))
        result: dict[str, float] = {}
        for instance_id, text in seen.items():
            if instance_id in registered:
                try:
                    result[instance_id] = float(text)
                except ValueError as exc:
                    raise CorruptTelemetryError(
                        f"cannot decode when {instance_id!r} was last seen: {text!r}"
                    ) from exc
        return result

    async def epoch(self) -> str:
        """The Redis server's run id: every restart gets a new one, whether it reloaded its
        data (AOF, RDB: perhaps without the last writes) or came back empty. Where INFO is
        not allowed (ACL), a marker key instead, which only a restart that lost it replaces."""
        with _store_errors("tell its run id"):
            try:
                info = await self._redis.info("server")
            except ResponseError:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.set(self.epoch_key(), uuid.uuid4().hex, nx=True)
                    pipe.get(self.epoch_key())
                    _, marker = await pipe.execute()
                return f"marker:{marker}"
        return str(info.get("run_id", ""))

    async def ping(self) -> None:
        """Raise TelemetryStoreError unless Redis answers (services check this at start)."""
        with _store_errors("answer PING"):
            await self._redis.ping()

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()
