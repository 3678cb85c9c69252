"""Exact books through outages: every request record survives a Redis restart (killed or
stopped, back empty) and a telemetry restart, and is counted exactly once; the router keeps
placing requests while telemetry is down.

Real redis-server (killed, terminated and restarted by the tests), real TelemetryService and
router on loopback gRPC, real simulated engines, the SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from conftest import RedisServer, RestartableRedis, free_port, wait_for
from security_helpers import SECURITY

from voltana.contract.state import Phase
from voltana.engine import SimEngineSettings
from voltana.sdk import VoltanaClient
from voltana.services.router import RouterService, RouterSettings
from voltana.services.router.reporting import CompletionReporter
from voltana.services.telemetry import (
    Completion,
    MemoryTelemetryStore,
    RedisTelemetryStore,
    TelemetryClient,
    TelemetryService,
    TelemetrySettings,
)
from voltana.services.telemetry.books import CompletionJournal
from voltana.services.telemetry.store import TelemetryStore
from voltana.stack import EngineNode, EngineNodeSettings

WAIT_TIMEOUT_S = 20.0


def record(index: int, finished_at_s: float) -> Completion:
    return Completion(
        request_id=f"r{index}",
        prefill_id="prefill-0",
        decode_id="decode-0",
        input_tokens=8,
        output_tokens=4,
        ttft_ms=5.0,
        mean_itl_ms=2.0,
        ok=True,
        finished_at_s=finished_at_s,
        status="OK",
    )


async def finished_in_telemetry(client: TelemetryClient) -> int | None:
    """Requests telemetry's aggregates hold (last minute), or None while it cannot answer."""
    try:
        return (await client.window_report(60.0)).cluster.finished
    except Exception:
        return None


async def wait_for_count(client: TelemetryClient, expected: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_TIMEOUT_S
    while (count := await finished_in_telemetry(client)) != expected:
        assert count is None or count < expected, f"telemetry counts {count} > {expected}"
        assert loop.time() < deadline, f"telemetry holds {count} of {expected} records"
        await asyncio.sleep(0.05)


# ---- the journal -------------------------------------------------------------------------------


@pytest.mark.unit
def test_the_journal_keeps_records_for_their_retention_and_counts_what_its_cap_drops() -> None:
    journal = CompletionJournal(cap=3, retention_s=10.0)
    for index in range(4):
        journal.add(record(index, finished_at_s=100.0 + index), now_s=104.0)
    # The cap pushed the oldest out before its time: counted.
    assert [c.request_id for c in journal.records(104.0)] == ["r1", "r2", "r3"]
    assert journal.dropped == 1
    # Past their retention, records leave without counting as dropped.
    assert [c.request_id for c in journal.records(112.5)] == ["r3"]
    assert journal.dropped == 1


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_record_id_counts_once_even_when_the_record_differs(
    redis_server: RedisServer, kind: str
) -> None:
    store: TelemetryStore = (
        MemoryTelemetryStore(clock=time.time)
        if kind == "memory"
        else RedisTelemetryStore.from_url(
            redis_server.url, clock=time.time, key_prefix=f"books-{uuid.uuid4().hex}:"
        )
    )
    first = dataclasses.replace(record(0, time.time()), record_id="id-0")
    try:
        await store.record_completion(first)
        # The same record as a later reporter sent it (its reason cut shorter, say).
        await store.record_completion(dataclasses.replace(first, reason="cut"))
        await store.record_completion(dataclasses.replace(first, record_id="id-1"))
        assert (await store.aggregates(None, 60.0)).finished == 2
    finally:
        await store.close()


@pytest.mark.integration
async def test_where_info_is_not_allowed_a_marker_tells_a_redis_that_lost_everything(
    start_redis_server: Callable[..., RedisServer],
) -> None:
    server = start_redis_server("--user", "default", "on", "nopass", "~*", "&*", "+@all", "-info")
    store = RedisTelemetryStore.from_url(server.url, clock=time.time)
    try:
        first = await store.epoch()
        assert first.startswith("marker:") and await store.epoch() == first
        async with aioredis.Redis.from_url(server.url) as redis:
            await redis.flushall()  # what a restart without persistence leaves
        assert await store.epoch() not in ("", first)
    finally:
        await store.close()


# ---- Redis restarts ----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("stop", ["kill", "terminate"])
async def test_records_survive_a_redis_restart_and_count_once(
    restartable_redis: RestartableRedis, stop: str
) -> None:
    settings = TelemetrySettings(
        redis_url=restartable_redis.url, upkeep_interval_s=0.1, security=SECURITY
    )
    async with (
        TelemetryService(settings) as telemetry,
        TelemetryClient(telemetry.address, timeout_s=5.0, security=SECURITY) as client,
    ):
        # The router's own delivery: buffered, retried, each record with its id.
        reporter = CompletionReporter(
            client, queue_size=1000, timeout_s=5.0, retry_s=0.05, max_retry_s=0.2
        )
        reporter.start()
        now_s = time.time()
        for index in range(20):
            reporter.submit(record(index, now_s))
        assert await reporter.flush(WAIT_TIMEOUT_S)
        await wait_for_count(client, 20)

        # Redis dies (SIGKILL or SIGTERM: without persistence both lose everything); records
        # finished meanwhile wait in the router's buffer.
        getattr(restartable_redis, stop)()
        for index in range(20, 35):
            reporter.submit(record(index, time.time()))
        await wait_for(lambda: reporter.retried > 0, "a failed report", WAIT_TIMEOUT_S)
        assert reporter.pending == 15

        restartable_redis.restart()  # back on the same port, empty
        # Telemetry writes again what it had stored; the router sends what it buffered.
        assert await reporter.flush(WAIT_TIMEOUT_S)
        await wait_for_count(client, 35)
        assert telemetry.books.replayed >= 20

        # A record sent again (its reply was lost) and another replay change nothing.
        stored = telemetry.books.journal.records(time.time())
        for completion in stored[:5]:
            await client.report_completion(completion)
        replayed = telemetry.books.replayed
        restartable_redis.kill()
        restartable_redis.restart()
        await wait_for(lambda: telemetry.books.replayed >= replayed + 35, "a replay", 20.0)
        await wait_for_count(client, 35)
        await reporter.stop(flush_timeout_s=1.0)
    assert (reporter.sent, reporter.dropped, reporter.rejected) == (35, 0, 0)
    assert len({c.record_id for c in stored}) == len(stored) == 35


# ---- telemetry restarts, through the router ----------------------------------------------------


@contextlib.asynccontextmanager
async def engines(telemetry_address: str) -> AsyncIterator[None]:
    """One prefill and one decode simulated engine, each registering itself with telemetry
    (in Redis, so a restarted telemetry still knows them) and reporting load to it."""
    async with contextlib.AsyncExitStack() as stack:
        for phase in (Phase.PREFILL, Phase.DECODE):
            node = EngineNode(
                EngineNodeSettings(
                    engine=SimEngineSettings(
                        mode=phase.value,
                        instance_id=f"{phase.value}-0",
                        speedup=50.0,
                        report_interval_ms=50.0,
                    ),
                    telemetry_address=telemetry_address,
                    security=SECURITY,
                )
            )
            await node.start()
            stack.push_async_callback(node.stop)
        yield


@pytest.mark.integration
async def test_the_router_places_while_telemetry_restarts_and_every_record_counts_once(
    restartable_redis: RestartableRedis,
) -> None:
    settings = TelemetrySettings(
        listen_address=f"127.0.0.1:{free_port()}",
        redis_url=restartable_redis.url,
        watch_min_interval_ms=20,
        security=SECURITY,
    )
    telemetry = TelemetryService(settings)
    await telemetry.start()
    try:
        async with (
            TelemetryClient(telemetry.address, timeout_s=5.0, security=SECURITY) as client,
            engines(telemetry.address),
        ):
            router = RouterService(
                RouterSettings(
                    telemetry_address=telemetry.address,
                    snapshot_interval_ms=20,
                    snapshot_stale_after_s=0.5,
                    telemetry_timeout_s=5.0,
                    health_check_interval_s=0.0,
                    router="round-robin",
                    security=SECURITY,
                )
            )
            async with router, VoltanaClient(router.address) as sdk:
                await wait_for(
                    lambda: len(router.cluster.endpoints) == 2, "the router to see both engines"
                )

                async def generate(count: int) -> None:
                    for index in range(count):
                        result = await sdk.generate(
                            f"request {index}", max_new_tokens=4, stream=False, timeout_s=30.0
                        )
                        assert len(result.token_ids) == 4

                await generate(5)
                await wait_for_count(client, 5)
                reporter = router.reporter
                assert reporter is not None and await reporter.flush(WAIT_TIMEOUT_S)

                await telemetry.stop()
                # Telemetry is down: requests are placed on the last snapshot, at once (none
                # waits for telemetry), and their records wait in the router.
                await generate(6)
                assert reporter.pending == 6
                await wait_for(lambda: router.cluster.snapshot_stale, "a stale snapshot", 10.0)
                stale = router.metrics_registry.get_sample_value("voltana_router_snapshot_stale")
                assert stale == 1.0
                await generate(2)

                telemetry = TelemetryService(settings)  # the same port and Redis
                await telemetry.start()
                await wait_for_count(client, 13)
                await wait_for(lambda: not router.cluster.snapshot_stale, "a fresh snapshot")
                assert await reporter.flush(WAIT_TIMEOUT_S)
                await asyncio.sleep(0.5)  # nothing more arrives: each record counted once
                assert await finished_in_telemetry(client) == 13
                assert (reporter.sent, reporter.dropped) == (13, 0)
    finally:
        await telemetry.stop()
