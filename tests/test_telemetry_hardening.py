"""Telemetry over real gRPC and a real redis-server, against bad records in Redis, a store it
cannot read, and a caller asking for aggregates too often."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
import redis.asyncio as aioredis
from conftest import wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security_helpers import SECURITY
from telemetry_helpers import instance_info

from voltana.contract.state import InstanceState, Phase
from voltana.rpc import create_channel
from voltana.rpc.names import TELEMETRY_SERVICE
from voltana.rpc.rate_limit import CallRateLimiter
from voltana.services.telemetry import (
    Completion,
    TelemetryClient,
    TelemetryService,
    TelemetrySettings,
)
from voltana.v1 import telemetry_pb2, telemetry_pb2_grpc

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _settings(redis_url: str, **overrides: Any) -> TelemetrySettings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_key_prefix": f"test:{uuid.uuid4().hex}:",
        "upkeep_interval_s": 0.05,
        "registry_refresh_s": 0.0,
        "instance_ttl_s": 0.0,
        "security": SECURITY,
    }
    values.update(overrides)
    return TelemetrySettings(**values)


def _load(instance_id: str, **fields: Any) -> InstanceState:
    return InstanceState(
        instance_id=instance_id,
        phase=Phase.DECODE,
        gpu_key="",
        sm_clock_mhz=0,
        observed_at_s=time.time(),
        **fields,
    )


async def _populate(client: TelemetryClient) -> None:
    for index, (instance_id, phase) in enumerate(
        (("p0", Phase.PREFILL), ("d0", Phase.DECODE), ("d1", Phase.DECODE))
    ):
        await client.register_instance(instance_info(instance_id, phase, index))
    await client.report_instance_samples([_load("d0", running_batch=3), _load("d1")])
    for n in range(4):
        await client.report_completion(
            Completion(f"r{n}", "p0", "d0", 10, 5, 100.0, 20.0, True, time.time())
        )


async def _health(address: str) -> int:
    async with create_channel(address, security=SECURITY) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=TELEMETRY_SERVICE), timeout=5.0
        )
    return int(reply.status)


Corrupt = Callable[[aioredis.Redis, str], Awaitable[Any]]


async def _bogus_phase(redis: aioredis.Redis, prefix: str) -> None:
    await redis.hset(f"{prefix}info:d1", "phase", "bogus")


async def _instances_retyped(redis: aioredis.Redis, prefix: str) -> None:
    await redis.delete(f"{prefix}instances")
    await redis.set(f"{prefix}instances", "x")


async def _state_retyped(redis: aioredis.Redis, prefix: str) -> None:
    await redis.delete(f"{prefix}state:d1")
    await redis.lpush(f"{prefix}state:d1", "x")


async def _completion_garbage(redis: aioredis.Redis, prefix: str) -> None:
    await redis.zadd(f"{prefix}completions", {"{not json": time.time()})
    await redis.xadd(f"{prefix}completion_log", {"c": "{not json"})


async def _seen_garbage(redis: aioredis.Redis, prefix: str) -> None:
    await redis.hset(f"{prefix}seen", "d1", "garbage")


CASES: list[tuple[str, str, Corrupt]] = [
    ("info", "info", _bogus_phase),
    ("instances", "instances", _instances_retyped),
    ("state", "state", _state_retyped),
    ("completions", "completion_log", _completion_garbage),
    ("seen", "seen", _seen_garbage),
]


@pytest.mark.parametrize(("case", "kind", "corrupt"), CASES, ids=[c[0] for c in CASES])
async def test_a_bad_record_never_fails_a_read_and_is_repaired(
    redis_server: Any, case: str, kind: str, corrupt: Corrupt
) -> None:
    settings = _settings(redis_server.url)
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async with (
            TelemetryService(settings) as service,
            TelemetryClient(service.address, security=SECURITY) as client,
        ):
            await _populate(client)
            await client.window_report(60.0)
            await corrupt(raw, settings.redis_key_prefix)
            for _ in range(3):
                snapshot = await client.snapshot()
                assert snapshot.decode["d0"].running_batch == 3
                report = await client.window_report(60.0)
                assert report.instances["d0"].finished == 4
            registry = service.metrics_registry

            def counted(name: str) -> float:
                return registry.get_sample_value(name, {"kind": kind}) or 0.0

            await wait_for(
                lambda: counted("voltana_telemetry_repaired_records_total") >= 1,
                "the upkeep to repair the record",
                timeout_s=15.0,
            )
            assert counted("voltana_telemetry_quarantined_records_total") >= 1
            assert await _health(service.address) == SERVING
            # A reporter whose registration was dropped registers again on its next sample.
            result = await client.report_instance_samples([_load("d1", running_batch=2)])
            for instance_id in result.unknown_instance_ids:
                await client.register_instance(instance_info(instance_id, Phase.DECODE, 2))
                await client.report_instance_samples([_load("d1", running_batch=2)])
            snapshot, infos = await client.snapshot_with_endpoints()
            assert snapshot.decode["d1"].running_batch == 2
            assert infos["d1"].phase is Phase.DECODE
            assert (await client.window_report(60.0)).instances["d0"].finished == 4
    finally:
        await raw.aclose()


async def test_health_follows_whether_the_store_can_be_read(
    start_redis_server: Callable[..., Any],
) -> None:
    """A Redis that answers PING but refuses reads (here: an ACL) is a store telemetry
    cannot use: NOT_SERVING until reads work again."""
    server = start_redis_server()
    admin = aioredis.Redis.from_url(server.url, decode_responses=True)
    user_password = "reader-password-0123456789"
    await admin.acl_setuser(
        "voltana", enabled=True, passwords=[f"+{user_password}"], keys=["*"], commands=["+@all"]
    )
    url = f"redis://voltana:{user_password}@127.0.0.1:{server.port}/0"
    try:
        async with TelemetryService(_settings(url)) as service:
            await wait_for_health(service.address, SERVING)
            await admin.acl_setuser("voltana", commands=["-@read"])
            await wait_for_health(service.address, NOT_SERVING)
            await admin.acl_setuser("voltana", commands=["+@read"])
            await wait_for_health(service.address, SERVING)
    finally:
        await admin.aclose()


async def test_health_is_not_serving_while_the_store_hangs(
    start_redis_server: Callable[..., Any],
) -> None:
    """A stopped Redis (SIGSTOP) answers nothing, not even an error: the check's deadline
    turns health NOT_SERVING; SERVING again once it runs."""
    server = start_redis_server()
    admin = aioredis.Redis.from_url(server.url, decode_responses=True)
    pid = int((await admin.info("server"))["process_id"])
    await admin.aclose()
    settings = _settings(server.url, store_check_timeout_s=0.5)
    try:
        async with TelemetryService(settings) as service:
            await wait_for_health(service.address, SERVING)
            os.kill(pid, signal.SIGSTOP)
            await wait_for_health(service.address, NOT_SERVING)
            os.kill(pid, signal.SIGCONT)
            await wait_for_health(service.address, SERVING)
    finally:
        os.kill(pid, signal.SIGCONT)


async def wait_for_health(address: str, status: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (current := await _health(address)) != status:
        assert time.monotonic() < deadline, f"health is {current}, not {status}"
        await asyncio.sleep(0.05)


async def test_aggregates_are_rate_limited_per_caller(redis_server: Any) -> None:
    """12 calls at once, none refilled: a new window length costs 10 of them (the store sums
    that whole window once), the same length again 1."""
    settings = _settings(redis_server.url, aggregates_rate_per_s=0.01, aggregates_burst=12)
    async with (
        TelemetryService(settings) as service,
        create_channel(service.address, security=SECURITY) as channel,
    ):
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        request = telemetry_pb2.GetAggregatesRequest(window_s=60.0)
        for _ in range(3):
            await stub.GetAggregates(request)
        for refused in (request, telemetry_pb2.GetAggregatesRequest(window_s=61.0)):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetAggregates(refused)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limited to 0.01 calls a second" in (raised.value.details() or "")
        # Other reads are not limited.
        await stub.GetSnapshot(telemetry_pb2.GetSnapshotRequest())


@pytest.mark.unit
def test_the_rate_limiter_refills_per_caller() -> None:
    now = [0.0]
    limiter = CallRateLimiter(2.0, 3, clock=lambda: now[0], max_callers=2)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0  # another caller has its own bucket
    now[0] = 0.5
    assert limiter.take("a") == 0.0  # one call refilled
    assert limiter.take("a") > 0
    now[0] = 100.0
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # refilled to the burst
    assert limiter.take("a") > 0
    now[0] = 200.0
    assert limiter.take("a", cost=2.5) == 0.0  # a costly call takes more
    assert limiter.take("a", cost=1.0) == pytest.approx(0.25)
    assert limiter.take("b", cost=99.0) == 0.0  # never more than the burst
    with pytest.raises(ValueError):
        CallRateLimiter(0.0, 1)
