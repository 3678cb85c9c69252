"""Bad records in Redis: every key kind corrupted in turn (bad value, wrong type, garbage
member) is skipped by every read, counted once, and repaired or dropped by the upkeep's heal.
Real redis-server."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from telemetry_helpers import FakeClock, instance_info

from voltana.contract.state import InstanceState, Phase
from voltana.services.telemetry import Completion, Metric, RedisTelemetryStore
from voltana.services.telemetry.quarantine import RecordKind
from voltana.services.telemetry.redis_repair import RedisRepair

pytestmark = pytest.mark.integration

Corrupt = Callable[[aioredis.Redis, RedisTelemetryStore], Awaitable[Any]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def raw(redis_server: Any) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_server: Any, clock: FakeClock) -> AsyncIterator[RedisTelemetryStore]:
    prefix = f"test:{uuid.uuid4().hex}:"
    built = RedisTelemetryStore.from_url(redis_server.url, clock=clock, key_prefix=prefix)
    yield built
    await built.close()


def _state(instance_id: str, phase: Phase, **fields: Any) -> InstanceState:
    return InstanceState(
        instance_id=instance_id,
        phase=phase,
        gpu_key="a100-80g",
        sm_clock_mhz=0,
        observed_at_s=999.0,
        **fields,
    )


def _completion(request_id: str, prefill_id: str, decode_id: str) -> Completion:
    return Completion(
        request_id=request_id,
        prefill_id=prefill_id,
        decode_id=decode_id,
        input_tokens=100,
        output_tokens=10,
        ttft_ms=120.0,
        mean_itl_ms=20.0,
        ok=True,
        finished_at_s=995.0,
    )


async def _populate(store: RedisTelemetryStore) -> None:
    """Two PD pairs: p0/d0 (healthy throughout) and p1/d1 (the one corrupted)."""
    for index, (instance_id, phase) in enumerate(
        (("p0", Phase.PREFILL), ("d0", Phase.DECODE), ("p1", Phase.PREFILL), ("d1", Phase.DECODE))
    ):
        await store.register_instance(instance_info(instance_id, phase, index))
        await store.put_instance_state(_state(instance_id, phase, queue_len=index + 1))
        await store.put_gpu_sample(instance_id, 998.0, 1410, 200.0, 100.0)
        await store.put_gpu_sample(instance_id, 999.0, 1410, 200.0, 300.0)
    for n in range(3):
        await store.record_completion(_completion(f"r{n}", "p0", "d0"))
        await store.record_completion(_completion(f"s{n}", "p1", "d1"))


def hset(key: Callable[[RedisTelemetryStore], str], field: str, value: str) -> Corrupt:
    async def corrupt(redis: aioredis.Redis, store: RedisTelemetryStore) -> None:
        await redis.hset(key(store), field, value)

    return corrupt


def retype(key: Callable[[RedisTelemetryStore], str]) -> Corrupt:
    """Replace the key by a string (every command of its own type then fails WRONGTYPE)."""

    async def corrupt(redis: aioredis.Redis, store: RedisTelemetryStore) -> None:
        await redis.delete(key(store))
        await redis.set(key(store), "not what you think")

    return corrupt


async def _garbage_point(redis: aioredis.Redis, store: RedisTelemetryStore) -> None:
    await redis.rpush(store.series_key("d1", Metric.ENERGY_J), "garbage")


async def _nan_point(redis: aioredis.Redis, store: RedisTelemetryStore) -> None:
    await redis.rpush(store.series_key("d1", Metric.SM_CLOCK_MHZ), "999.5 nan")


async def _garbage_completion(redis: aioredis.Redis, store: RedisTelemetryStore) -> None:
    await redis.zadd(store.completions_key(), {"{not json": 996.0})


async def _impossible_completion(redis: aioredis.Redis, store: RedisTelemetryStore) -> None:
    await redis.zadd(
        store.completions_key(), {'{"request_id":"x","ok":"1","output_tokens":"-5"}': 996.0}
    )


async def _garbage_log_entry(redis: aioredis.Redis, store: RedisTelemetryStore) -> None:
    await redis.xadd(store.completion_log_key(), {"c": "{not json"})


async def _bad_instance_id(redis: aioredis.Redis, store: RedisTelemetryStore) -> None:
    await redis.sadd(store.instances_key(), " spaced ")


# (case, kind of key, corruption). Each leaves p0/d0 untouched.
CASES: list[tuple[str, RecordKind, Corrupt]] = [
    ("info bad phase", RecordKind.INFO, hset(lambda s: s.info_key("d1"), "phase", "bogus")),
    ("info bad port", RecordKind.INFO, hset(lambda s: s.info_key("d1"), "gpu_index", "-3")),
    ("info other id", RecordKind.INFO, hset(lambda s: s.info_key("d1"), "instance_id", "p0")),
    ("info wrong type", RecordKind.INFO, retype(lambda s: s.info_key("d1"))),
    ("state bad value", RecordKind.STATE, hset(lambda s: s.state_key("d1"), "queue_len", "-5")),
    (
        "state not a number",
        RecordKind.STATE,
        hset(lambda s: s.state_key("d1"), "kv_tokens_used", "x"),
    ),
    ("state wrong type", RecordKind.STATE, retype(lambda s: s.state_key("d1"))),
    ("gpu nan power", RecordKind.GPU, hset(lambda s: s.gpu_key("d1"), "power_w", "nan")),
    ("gpu wrong type", RecordKind.GPU, retype(lambda s: s.gpu_key("d1"))),
    ("instances wrong type", RecordKind.INSTANCES, retype(lambda s: s.instances_key())),
    ("instances bad id", RecordKind.INSTANCES, _bad_instance_id),
    ("series garbage point", RecordKind.SERIES, _garbage_point),
    ("series nan point", RecordKind.SERIES, _nan_point),
    (
        "series wrong type",
        RecordKind.SERIES,
        retype(lambda s: s.series_key("d1", Metric.ENERGY_J)),
    ),
    ("completions non-JSON", RecordKind.COMPLETIONS, _garbage_completion),
    ("completions impossible", RecordKind.COMPLETIONS, _impossible_completion),
    ("completions wrong type", RecordKind.COMPLETIONS, retype(lambda s: s.completions_key())),
    (
        "completion ids wrong type",
        RecordKind.COMPLETION_IDS,
        retype(lambda s: s.completion_ids_key()),
    ),
    ("log non-JSON", RecordKind.COMPLETION_LOG, _garbage_log_entry),
    ("log wrong type", RecordKind.COMPLETION_LOG, retype(lambda s: s.completion_log_key())),
    ("seen garbage", RecordKind.SEEN, hset(lambda s: s.seen_key(), "d1", "garbage")),
    ("seen infinite", RecordKind.SEEN, hset(lambda s: s.seen_key(), "d1", "inf")),
    ("seen far future", RecordKind.SEEN, hset(lambda s: s.seen_key(), "d1", "9e15")),
    ("seen wrong type", RecordKind.SEEN, retype(lambda s: s.seen_key())),
]


async def _read_everything(store: RedisTelemetryStore, *, seen_readable: bool = True) -> None:
    """Every read telemetry serves: none may raise, and p0/d0 stay as they were
    (``seen_readable``: False while the seen hash itself is not a hash: no one expires)."""
    states = await store.latest_states()
    assert states["p0"].queue_len == 1 and states["d0"].queue_len == 2
    infos = await store.instance_infos()
    assert {"p0", "d0"} <= infos.keys()
    report = await store.window_report(None, 60.0)
    assert report.instances["p0"].finished == 3
    assert report.instances["d0"].finished == 3
    assert report.instances["d0"].energy_j == pytest.approx(200.0)
    assert (await store.window_report(["d0"], 60.0)).cluster.finished == 3
    assert len(await store.series("d0", Metric.ENERGY_J)) == 2
    await store.series("d1", Metric.ENERGY_J)
    seen = await store.last_seen()
    assert {"p0", "d0"} <= seen.keys() or not seen_readable


@pytest.mark.parametrize(("case", "kind", "corrupt"), CASES, ids=[c[0] for c in CASES])
async def test_a_bad_record_is_skipped_counted_once_and_repaired(
    store: RedisTelemetryStore,
    raw: aioredis.Redis,
    clock: FakeClock,
    case: str,
    kind: RecordKind,
    corrupt: Corrupt,
) -> None:
    await _populate(store)
    await store.window_report(None, 60.0)  # the completions are mirrored before the fault
    await corrupt(raw, store)

    for _ in range(3):  # read over and over: still answered, counted once
        await _read_everything(store, seen_readable=case != "seen wrong type")
    repair = RedisRepair(store)
    assert await repair.heal() >= 1
    assert store.quarantine.found[kind] == 1, store.quarantine.found
    assert store.quarantine.repaired[kind] == 1
    assert store.quarantine.pending() == []

    # Healed: nothing bad is left to find, and every read still answers.
    found_before = sum(store.quarantine.found.values())
    assert await repair.heal() == 0
    await _read_everything(store)
    await store.window_report(None, 60.0)
    assert sum(store.quarantine.found.values()) == found_before
    # A store that starts afresh (another telemetry process) finds nothing bad either.
    fresh = RedisTelemetryStore(store.redis, clock=clock, key_prefix=store.key_prefix)
    await _read_everything(fresh)
    assert await RedisRepair(fresh).heal() == 0
    assert not fresh.quarantine.found


async def test_a_dropped_registration_comes_back_with_the_next_registration(
    store: RedisTelemetryStore, raw: aioredis.Redis
) -> None:
    """What the reporter does once its samples come back as unknown: the instance is whole."""
    await _populate(store)
    await raw.hset(store.info_key("d1"), "phase", "bogus")
    await RedisRepair(store).heal()
    assert "d1" not in await store.instance_infos()
    await store.register_instance(instance_info("d1", Phase.DECODE, 3))
    assert (await store.instance_infos())["d1"].phase is Phase.DECODE
    assert (await store.latest_states())["d1"].queue_len == 4


async def test_a_repaired_seen_time_lets_a_silent_instance_expire(
    store: RedisTelemetryStore, raw: aioredis.Redis, clock: FakeClock
) -> None:
    """A garbage ``seen`` time used to keep an instance from ever expiring: it is replaced by
    the store's clock, so the instance expires one TTL later like any silent one."""
    await _populate(store)
    await raw.hset(store.seen_key(), "d1", "garbage")
    assert "d1" not in await store.last_seen()
    clock.now_s = 1005.0
    await RedisRepair(store).heal()
    assert (await store.last_seen())["d1"] == 1005.0


async def test_the_instances_set_is_rebuilt_and_serves_meanwhile(
    store: RedisTelemetryStore, raw: aioredis.Redis
) -> None:
    await _populate(store)
    await raw.delete(store.instances_key())
    await raw.set(store.instances_key(), "x")
    # Every instance still shows (from their own keys) and still takes reports.
    assert set(await store.latest_states()) == {"p0", "d0", "p1", "d1"}
    await store.put_instance_state(_state("d0", Phase.DECODE, queue_len=9))
    await RedisRepair(store).heal()
    assert await raw.type(store.instances_key()) == "set"
    assert await raw.smembers(store.instances_key()) == {"p0", "d0", "p1", "d1"}
    assert (await store.latest_states())["d0"].queue_len == 9


async def test_a_store_it_cannot_read_fails_the_heal(store: RedisTelemetryStore) -> None:
    """What health goes by: a heal that cannot read raises TelemetryStoreError."""
    from voltana.services.telemetry import TelemetryStoreError

    await _populate(store)
    dead = RedisTelemetryStore.from_url(
        "redis://127.0.0.1:1/0", clock=FakeClock(), key_prefix=store.key_prefix
    )
    try:
        with pytest.raises(TelemetryStoreError):
            await RedisRepair(dead).heal()
    finally:
        await dead.close()


async def test_a_reload_reads_every_completion_page_by_page(
    store: RedisTelemetryStore, clock: FakeClock
) -> None:
    """Pages of 3 over completions sharing finish times across page boundaries: a fresh
    process mirrors each one once."""
    finish_times = [990.0, 990.0, 990.0, 990.0, 991.0, 992.0, 992.0, 993.0, 993.0, 993.0, 994.0]
    for n, finished_at_s in enumerate(finish_times):
        await store.record_completion(
            dataclasses.replace(_completion(f"r{n}", "p0", "d0"), finished_at_s=finished_at_s)
        )
    fresh = RedisTelemetryStore(
        store.redis, clock=clock, key_prefix=store.key_prefix, reload_page=3
    )
    report = await fresh.window_report(None, 60.0)
    assert report.cluster.finished == len(finish_times)
    assert sorted(c.request_id for c in fresh.mirrored_completions()) == sorted(
        f"r{n}" for n in range(len(finish_times))
    )


async def test_a_member_whose_key_changed_type_does_not_fail_the_heal(
    store: RedisTelemetryStore, raw: aioredis.Redis
) -> None:
    """A bad seen time is found, then (before the heal) the whole hash is replaced by a string:
    the heal repairs the key and does not fail (health would turn NOT_SERVING)."""
    await _populate(store)
    await raw.hset(store.seen_key(), "d1", "garbage")
    await store.last_seen()
    await raw.delete(store.seen_key())
    await raw.set(store.seen_key(), "x")
    repair = RedisRepair(store)
    await repair.heal()
    await repair.heal()
    assert await raw.type(store.seen_key()) == "hash"
    assert store.quarantine.pending() == []
    assert {"p0", "d0", "p1", "d1"} <= (await store.last_seen()).keys()


@pytest.mark.parametrize(
    "key",
    [
        RedisTelemetryStore.completions_key,
        RedisTelemetryStore.completion_ids_key,
        RedisTelemetryStore.completion_log_key,
    ],
    ids=["completions", "completion ids", "completion log"],
)
async def test_a_completion_refused_by_a_retyped_key_is_stored_once_repaired(
    store: RedisTelemetryStore, raw: aioredis.Redis, key: Callable[[RedisTelemetryStore], str]
) -> None:
    """Redis does not undo a script that fails half-way: the record id must not be marked
    stored when the completion was not, or the reporter's retry counts as a duplicate and the
    record is lost (4 of 138 were, in the fault benchmark)."""
    from voltana.services.telemetry import TelemetryStoreError

    await _populate(store)
    await store.window_report(None, 60.0)
    await retype(key)(raw, store)
    late = dataclasses.replace(_completion("late", "p0", "d0"), record_id="router-a:1")
    with pytest.raises(TelemetryStoreError, match="WRONGTYPE"):
        await store.record_completion(late)
    await RedisRepair(store).heal()
    await store.record_completion(late)  # the reporter's retry
    await store.record_completion(late)  # and a duplicate of it
    report = await store.window_report(None, 60.0)
    assert report.instances["p0"].finished == 4
