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
- ``{prefix}completion_log``            stream of the same JSON completions in the order they
                                        were recorded (capped near the completions cap): how
                                        every telemetry process keeps its aggregates up to date
                                        without rereading the completions (completion_index.py)
- ``{prefix}seen``                      hash, instance id → when it last registered or reported
                                        load (store clock); silent instances expire by it
- ``{prefix}epoch``                     a random marker, only where INFO is not allowed: a
                                        restart that lost it shows as a new epoch (``epoch``)

Registration, load and GPU data stay in separate hashes and are merged on read (see
``merge.py``), so no write has to read first.

Everything read back is checked as strictly as what the gRPC side accepts: a record that does
not decode, does not validate or has the wrong Redis type is skipped and noted in
``quarantine`` (quarantine.py), so one bad record never fails a snapshot or an aggregate;
``heal()`` (run by telemetry's upkeep) repairs or drops what was noted (redis_repair.py).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from voltana.contract.instances import InstanceInfo
from voltana.contract.state import InstanceState, SloTarget, slo_problem
from voltana.rpc.limits import check_id
from voltana.services.telemetry.codec import decode_fields, encode_fields, encode_json
from voltana.services.telemetry.errors import (
    CorruptTelemetryError,
    InvalidTelemetryError,
)
from voltana.services.telemetry.merge import (
    gpu_metric_values,
    load_metric_values,
    merge_state,
    stamp_state,
)
from voltana.services.telemetry.quarantine import BadRecord, Quarantine, RecordKind
from voltana.services.telemetry.records import (
    Aggregates,
    Completion,
    GpuReading,
    Metric,
    SeriesPoint,
    WindowReport,
)
from voltana.services.telemetry.redis_completions import LOG_FIELD, RELOAD_PAGE, CompletionMirror
from voltana.services.telemetry.redis_io import (
    is_wrong_type,
    raise_failures,
    run_pipeline,
    store_errors,
    texts,
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

_LOG = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "voltana:"

# Stores a completion unless its record id (ARGV[3], "" = none) is already known, and logs it in
# the completion-log stream; one atomic step, so a retry racing a replay counts once. Ids are
# kept twice as long as the records (an id outlives its record, so a late duplicate cannot slip
# back in). Returns 1 when stored.
# Redis does not roll a script back when a command in it fails, so every key's type is checked
# before anything is written: a completions key of another type must not leave the record id
# marked as stored (the reporter's retry would then be taken for a duplicate and the record lost).
# KEYS: completions, completion ids, completion log; ARGV: member, score, record id, cap, log field.
_RECORD_COMPLETION_LUA = """
local expected = {'zset', 'zset', 'stream'}
for i = 1, 3 do
  local found = redis.call('TYPE', KEYS[i])['ok']
  if found ~= 'none' and found ~= expected[i] then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. found .. ', not a ' .. expected[i])
  end
end
local cap = tonumber(ARGV[4])
if ARGV[3] ~= '' then
  if redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[3]) == 0 then
    return 0
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -2 * cap - 1)
end
local added = redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -cap - 1)
if added == 1 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', cap, '*', ARGV[5], ARGV[1])
end
return added
"""

# A ``seen`` time further ahead of the store's clock than this was not written by a store
# (they stamp their own clock): it would keep a silent instance from ever expiring.
MAX_SEEN_AHEAD_S = 300.0
T = TypeVar("T")


def _decode_point(text: str) -> SeriesPoint:
    ts_text, _, value_text = text.partition(" ")
    try:
        point = SeriesPoint(float(ts_text), float(value_text))
    except ValueError as exc:
        raise CorruptTelemetryError(f"cannot decode stored series point {text!r}") from exc
    if not (math.isfinite(point.ts_s) and math.isfinite(point.value)) or point.ts_s < 0:
        raise CorruptTelemetryError(f"stored series point {text!r} cannot be true")
    return point


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
        reload_page: int = RELOAD_PAGE,
    ) -> None:
        """``client`` must decode responses to ``str`` (``decode_responses=True``);
        ``reload_page``: completions read per command when they are all read again."""
        self._redis = client
        self._clock = clock
        self._prefix = key_prefix
        self._series_cap = series_cap
        self._completions_cap = completions_cap
        self._owns_client = owns_client
        self._changes = ChangeNotifier()
        self._record_completion = client.register_script(_RECORD_COMPLETION_LUA)
        self.quarantine = Quarantine()
        self._completions = CompletionMirror(
            client,
            completions_key=self.completions_key(),
            log_key=self.completion_log_key(),
            cap=completions_cap,
            quarantine=self.quarantine,
            reload_page=reload_page,
        )

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

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    @property
    def series_cap(self) -> int:
        return self._series_cap

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

    def cluster_slo_key(self) -> str:
        return f"{self._prefix}cluster_slo"

    def seen_key(self) -> str:
        return f"{self._prefix}seen"

    def epoch_key(self) -> str:
        return f"{self._prefix}epoch"

    def completion_log_key(self) -> str:
        return f"{self._prefix}completion_log"

    def mirrored_completions(self) -> list[Completion]:
        """The completions as this process last read them (empty until it read them)."""
        return self._completions.completions()

    def forget_completions(self) -> None:
        """Read the completions again at the next aggregate (their keys changed)."""
        self._completions.forget()

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
        with store_errors(f"store {key}"):
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
                replies = raise_failures(f"store {key}", await pipe.execute(raise_on_error=False))
        # The hash is stored whatever else failed; a shared key of the wrong type (instances,
        # seen, a series) is upkeep's to repair, not a reason to refuse the report.
        if is_wrong_type(replies[1]):
            self.quarantine.note(
                BadRecord(RecordKind.INSTANCES, self.instances_key(), why="not a set")
            )
        if seen and is_wrong_type(replies[4]):
            self.quarantine.note(BadRecord(RecordKind.SEEN, self.seen_key(), why="not a hash"))
        if points is not None:
            series_replies = replies[5 if seen else 4 :: 2]
            for metric, reply in zip(points[1], series_replies, strict=True):
                if is_wrong_type(reply):
                    series_key = self.series_key(instance_id, metric)
                    self.quarantine.note(BadRecord(RecordKind.SERIES, series_key, why="not a list"))
        self._changes.changed()
        return not replies[0]

    async def register_instance(self, info: InstanceInfo) -> bool:
        validate_instance_info(info)
        return await self._write_hash(
            info.instance_id, self.info_key(info.instance_id), encode_fields(info), None, seen=True
        )

    async def unregister_instance(self, instance_id: str) -> bool:
        with store_errors(f"forget {instance_id}"):
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
        with store_errors("record a completion"):
            # Keeps the newest `completions_cap` entries (ranks ascend with finish time).
            await self._record_completion(
                keys=[self.completions_key(), self.completion_ids_key(), self.completion_log_key()],
                args=[
                    encode_json(completion),
                    repr(completion.finished_at_s),
                    completion.record_id,
                    self._completions_cap,
                    LOG_FIELD,
                ],
            )

    async def _run(self, action: str, queue: Callable[[Any], None]) -> list[Any]:
        return await run_pipeline(self._redis, action, queue)

    def _note(self, kind: RecordKind, key: str, why: str, member: str = "") -> None:
        self.quarantine.note(BadRecord(kind, key, member, why))

    def valid_ids(self, reply: Any) -> list[str]:
        """The members of the instances set that are usable ids (the others quarantined)."""
        if is_wrong_type(reply):
            self._note(RecordKind.INSTANCES, self.instances_key(), "not a set")
            return []
        ids = []
        for instance_id in texts(reply):
            try:
                check_id(instance_id, "instance id", error=InvalidTelemetryError)
            except InvalidTelemetryError as exc:
                self._note(RecordKind.INSTANCES, self.instances_key(), str(exc), instance_id)
                continue
            ids.append(instance_id)
        return sorted(ids)

    async def scan_instance_ids(self) -> list[str]:
        """Ids named by the instances' own keys (registration, state, GPU hashes): what the
        instances set is rebuilt from."""
        prefix = self._prefix.translate({ord(c): f"\\{c}" for c in "*?[]\\"})
        ids: set[str] = set()
        with store_errors("list the instances' keys"):
            for kind in ("info", "state", "gpu"):
                async for key in self._redis.scan_iter(match=f"{prefix}{kind}:*", count=1000):
                    ids.add(texts([key])[0].removeprefix(f"{self._prefix}{kind}:"))
        return sorted(ids)

    async def _instance_ids(self) -> list[str]:
        (members,) = await self._run("list instances", lambda p: p.smembers(self.instances_key()))
        if is_wrong_type(members):
            self.valid_ids(members)  # quarantined; until upkeep repairs it, the keys tell
            return await self.scan_instance_ids()
        return self.valid_ids(members)

    def decode_record(
        self,
        kind: RecordKind,
        key: str,
        instance_id: str,
        reply: Any,
        cls: type[T],
        validate: Callable[[T], None],
    ) -> T | None:
        """A stored hash as ``cls``, or None when absent or quarantined (wrong type, does not
        decode, fails ``validate``, names another instance)."""
        if is_wrong_type(reply):
            self._note(kind, key, "not a hash")
            return None
        if not reply:
            return None
        try:
            record = decode_fields(cls, reply)
            validate(record)
            stored_id = getattr(record, "instance_id", instance_id)
            if stored_id != instance_id:
                raise InvalidTelemetryError(f"it names instance {stored_id!r}")
        except (CorruptTelemetryError, InvalidTelemetryError) as exc:
            self._note(kind, key, str(exc))
            return None
        return record

    def _info(self, instance_id: str, reply: Any) -> InstanceInfo | None:
        key = self.info_key(instance_id)
        return self.decode_record(
            RecordKind.INFO, key, instance_id, reply, InstanceInfo, validate_instance_info
        )

    async def latest_states(self) -> dict[str, InstanceState]:
        instance_ids = await self._instance_ids()

        def queue(pipe: Any) -> None:
            for instance_id in instance_ids:
                pipe.hgetall(self.info_key(instance_id))
                pipe.hgetall(self.state_key(instance_id))
                pipe.hgetall(self.gpu_key(instance_id))

        replies = await self._run("read instance states", queue)
        states: dict[str, InstanceState] = {}
        for index, instance_id in enumerate(instance_ids):
            info_hash, state_hash, gpu_hash = replies[3 * index : 3 * index + 3]
            merged = merge_state(
                instance_id,
                self._info(instance_id, info_hash),
                self.decode_record(
                    RecordKind.STATE,
                    self.state_key(instance_id),
                    instance_id,
                    state_hash,
                    InstanceState,
                    validate_instance_state,
                ),
                self.decode_record(
                    RecordKind.GPU,
                    self.gpu_key(instance_id),
                    instance_id,
                    gpu_hash,
                    GpuReading,
                    validate_gpu_sample,
                ),
            )
            if merged is not None:
                states[instance_id] = merged
        return states

    async def instance_infos(self) -> dict[str, InstanceInfo]:
        instance_ids = await self._instance_ids()

        def queue(pipe: Any) -> None:
            for instance_id in instance_ids:
                pipe.hgetall(self.info_key(instance_id))

        replies = await self._run("read instance registrations", queue)
        infos = {
            instance_id: self._info(instance_id, reply)
            for instance_id, reply in zip(instance_ids, replies, strict=True)
        }
        return {instance_id: info for instance_id, info in infos.items() if info is not None}

    def _points(self, key: str, raw: Any) -> list[SeriesPoint]:
        """A stored series without the points that cannot be read (quarantined)."""
        if is_wrong_type(raw):
            self._note(RecordKind.SERIES, key, "not a list")
            return []
        points = []
        for text in texts(raw):
            try:
                points.append(_decode_point(text))
            except CorruptTelemetryError as exc:
                self._note(RecordKind.SERIES, key, str(exc), text)
        return points

    async def series(
        self, instance_id: str, metric: Metric | str, since_s: float = 0.0
    ) -> list[SeriesPoint]:
        key = self.series_key(instance_id, parse_metric(metric))
        (raw,) = await self._run(f"read {key}", lambda p: p.lrange(key, 0, -1))
        return [p for p in self._points(key, raw) if p.ts_s >= since_s]

    async def warm_up(self) -> None:
        """Mirror the completions now (telemetry does at start, so its first aggregate does
        not pay for it)."""
        await self._completions.sync()

    async def window_report(
        self, instance_ids: Collection[str] | None, window_s: float, slo: SloTarget = DEFAULT_SLO
    ) -> WindowReport:
        validate_window(window_s)
        await self._completions.sync()
        now_s = self._clock()
        ids = await self._instance_ids() if instance_ids is None else list(instance_ids)

        def queue(pipe: Any) -> None:
            for instance_id in ids:
                pipe.lrange(self.series_key(instance_id, Metric.ENERGY_J), 0, -1)
                pipe.lrange(self.series_key(instance_id, Metric.SM_CLOCK_MHZ), 0, -1)

        series_raw = await self._run("read aggregates", queue)

        def points(instance_id: str, metric: Metric, raw: Any) -> list[SeriesPoint]:
            return self._points(self.series_key(instance_id, metric), raw)

        return self._completions.index.report(
            instance_ids=ids,
            whole_cluster=instance_ids is None,
            window_s=window_s,
            now_s=now_s,
            energy_series={
                i: points(i, Metric.ENERGY_J, series_raw[2 * n]) for n, i in enumerate(ids)
            },
            clock_series={
                i: points(i, Metric.SM_CLOCK_MHZ, series_raw[2 * n + 1]) for n, i in enumerate(ids)
            },
            slo=slo,
        )

    async def aggregates(
        self, instance_id: str | None, window_s: float, slo: SloTarget = DEFAULT_SLO
    ) -> Aggregates:
        if instance_id is None:
            return (await self.window_report(None, window_s, slo)).cluster
        return (await self.window_report([instance_id], window_s, slo)).instances[instance_id]

    def seen_problem(self, text: str) -> str | None:
        """Why a stored ``seen`` time cannot be used, or None."""
        try:
            seen_s = float(text)
        except ValueError:
            return f"not a number: {text!r}"
        if not math.isfinite(seen_s) or seen_s < 0:
            return f"cannot be true: {text!r}"
        if seen_s > self._clock() + MAX_SEEN_AHEAD_S:
            return f"{seen_s - self._clock():.0f} s ahead of the store's clock"
        return None

    async def last_seen(self) -> dict[str, float]:
        def queue(pipe: Any) -> None:
            pipe.smembers(self.instances_key())
            pipe.hgetall(self.seen_key())

        members, seen = await self._run("read when instances were last seen", queue)
        if is_wrong_type(members):
            self.valid_ids(members)
            registered = set(await self.scan_instance_ids())
        else:
            registered = set(self.valid_ids(members))
        if is_wrong_type(seen):
            self._note(RecordKind.SEEN, self.seen_key(), "not a hash")
            return {}
        result: dict[str, float] = {}
        for instance_id, text in seen.items():
            if instance_id not in registered:
                continue
            problem = self.seen_problem(text)
            if problem is None:
                result[instance_id] = float(text)
            else:
                self._note(RecordKind.SEEN, self.seen_key(), problem, instance_id)
        return result

    async def epoch(self) -> str:
        """The Redis server's run id: every restart gets a new one, whether it reloaded its
        data (AOF, RDB: perhaps without the last writes) or came back empty. Where INFO is
        not allowed (ACL), a marker key instead, which only a restart that lost it replaces."""
        with store_errors("tell its run id"):
            try:
                info = await self._redis.info("server")
            except ResponseError:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.set(self.epoch_key(), uuid.uuid4().hex, nx=True)
                    pipe.get(self.epoch_key())
                    _, marker = await pipe.execute()
                return f"marker:{marker}"
        return str(info.get("run_id", ""))

    async def cluster_slo(self) -> SloTarget | None:
        key = self.cluster_slo_key()
        (reply,) = await self._run("read the cluster SLO", lambda pipe: pipe.hgetall(key))
        if is_wrong_type(reply):
            _LOG.warning("telemetry store: %s is not a hash; the cluster SLO is written again", key)
            return None
        if not reply:
            return None
        try:
            slo = SloTarget(
                ttft_ms=float(reply.get("ttft_ms", "nan")),
                itl_ms=float(reply.get("itl_ms", "nan")),
                ttft_ms_per_1k_tokens=float(reply.get("ttft_ms_per_1k_tokens", "0")),
            )
        except (TypeError, ValueError):
            slo = None
        if slo is None or slo_problem(slo) is not None:
            _LOG.warning("telemetry store: %s holds no usable SLO (%s); written again", key, reply)
            return None
        return slo

    async def put_cluster_slo(self, slo: SloTarget) -> None:
        key = self.cluster_slo_key()
        fields: dict[Any, Any] = {
            "ttft_ms": repr(slo.ttft_ms),
            "itl_ms": repr(slo.itl_ms),
            "ttft_ms_per_1k_tokens": repr(slo.ttft_ms_per_1k_tokens),
        }
        with store_errors("store the cluster SLO"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)  # whatever type it had
                pipe.hset(key, mapping=fields)
                await pipe.execute()

    async def ping(self) -> None:
        """Raise TelemetryStoreError unless Redis answers (services check this at start)."""
        with store_errors("answer PING"):
            await self._redis.ping()

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()
