"""Registration that heals itself, expiry of silent instances, telemetry health, and outcomes
that telemetry keeps apart (completed vs failed by status) and never counts twice.

Real telemetry (memory store, or Redis on a real redis-server that tests kill and restart),
real simulated engines registering through ``EngineNode`` on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from conftest import RestartableRedis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security_helpers import SECURITY

from voltana.contract.state import InstanceState, Phase
from voltana.engine import SimEngine, SimEngineSettings
from voltana.rpc import create_channel
from voltana.rpc.names import TELEMETRY_SERVICE
from voltana.services.telemetry import (
    Completion,
    InstanceInfo,
    MemoryTelemetryStore,
    TelemetryClient,
    TelemetryService,
    TelemetrySettings,
)
from voltana.services.telemetry.errors import TelemetryStoreError
from voltana.services.telemetry.upkeep import TelemetryUpkeep
from voltana.stack import EngineNode, EngineNodeSettings
from voltana.stack.sglang_reporter import SglangInstanceReporter, SglangInstanceSettings

WAIT_TIMEOUT_S = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def listed(client: TelemetryClient) -> set[str]:
    snapshot = await client.snapshot()
    return {*snapshot.prefill, *snapshot.decode}


async def wait_until_listed(client: TelemetryClient, instance_id: str, present: bool) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_TIMEOUT_S
    while True:
        with contextlib.suppress(Exception):  # telemetry may still be reconnecting to Redis
            if (instance_id in await listed(client)) == present:
                return
        if loop.time() > deadline:
            raise AssertionError(f"{instance_id} {'never' if present else 'still'} listed")
        await asyncio.sleep(0.05)


async def telemetry_health(address: str) -> int:
    async with create_channel(address, security=SECURITY) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=TELEMETRY_SERVICE)
        )
        return int(response.status)


async def wait_for_health(address: str, status: int) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while (current := await telemetry_health(address)) != status:
        assert time.monotonic() < deadline, f"telemetry health stayed {current}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def engine_node(telemetry_address: str, instance_id: str) -> AsyncIterator[EngineNode]:
    node = EngineNode(
        EngineNodeSettings(
            engine=SimEngineSettings(
                mode="decode", instance_id=instance_id, speedup=20.0, report_interval_ms=50.0
            ),
            telemetry_address=telemetry_address,
            security=SECURITY,
        )
    )
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


# ---- re-registration -------------------------------------------------------------------------


@pytest.mark.integration
async def test_an_instance_registers_again_after_someone_unregisters_it() -> None:
    async with (
        TelemetryService(TelemetrySettings(security=SECURITY)) as telemetry,
        TelemetryClient(telemetry.address, security=SECURITY) as client,
        engine_node(telemetry.address, "decode-0") as node,
    ):
        await wait_until_listed(client, "decode-0", True)
        await client.unregister_instance("decode-0")

        # Its next load report is rejected as unknown; it registers again at once.
        await wait_until_listed(client, "decode-0", True)
        assert node.registration is not None and node.registration.reregistrations >= 1


@pytest.mark.integration
async def test_the_sglang_reporter_registers_its_server_again_and_unregisters_on_stop() -> None:
    async with (
        TelemetryService(TelemetrySettings(security=SECURITY)) as telemetry,
        TelemetryClient(telemetry.address, security=SECURITY) as client,
        SimEngine(SimEngineSettings(mode="null", speedup=20.0)) as engine,
    ):
        reporter = SglangInstanceReporter(
            SglangInstanceSettings(
                telemetry_address=telemetry.address,
                instance_id="decode-sg",
                phase=Phase.DECODE,
                engine_url=engine.url,
                interval_ms=50,
                security=SECURITY,
            )
        )
        await reporter.start()
        try:
            await client.unregister_instance("decode-sg")
            await wait_until_listed(client, "decode-sg", True)
            assert reporter.registration is not None
            assert reporter.registration.reregistrations >= 1
        finally:
            await reporter.stop()
        assert "decode-sg" not in await listed(client)


@pytest.mark.integration
async def test_redis_restarted_empty_heals_registrations_and_health(
    restartable_redis: RestartableRedis,
) -> None:
    settings = TelemetrySettings(
        redis_url=restartable_redis.url,
        upkeep_interval_s=0.1,
        registry_refresh_s=0.2,
        security=SECURITY,
    )
    async with (
        TelemetryService(settings) as telemetry,
        TelemetryClient(telemetry.address, security=SECURITY) as client,
        engine_node(telemetry.address, "decode-0"),
    ):
        await wait_until_listed(client, "decode-0", True)
        await wait_for_health(telemetry.address, SERVING)

        restartable_redis.kill()
        await wait_for_health(telemetry.address, NOT_SERVING)
        restartable_redis.restart()  # empty: no persistence
        back_at = time.monotonic()
        await wait_for_health(telemetry.address, SERVING)
        await wait_until_listed(client, "decode-0", True)
        # Well within the 5 s the fault suite allows.
        assert time.monotonic() - back_at < 5.0


@pytest.mark.integration
async def test_a_restarted_in_memory_telemetry_gets_its_instances_back() -> None:
    async with TelemetryService(TelemetrySettings(security=SECURITY)) as first:
        address = first.address
        port = first.port
        async with engine_node(address, "decode-0") as node:
            await first.stop()
            async with (
                TelemetryService(
                    TelemetrySettings(listen_address=f"127.0.0.1:{port}", security=SECURITY)
                ) as second,
                TelemetryClient(second.address, security=SECURITY) as client,
            ):
                await wait_until_listed(client, "decode-0", True)
                assert node.registration is not None
                assert node.registration.reregistrations >= 1


@pytest.mark.integration
async def test_silent_instances_expire_and_reporting_ones_stay() -> None:
    settings = TelemetrySettings(instance_ttl_s=0.5, upkeep_interval_s=0.1, security=SECURITY)
    async with (
        TelemetryService(settings) as telemetry,
        TelemetryClient(telemetry.address, security=SECURITY) as client,
        engine_node(telemetry.address, "decode-live"),
    ):
        await client.register_instance(InstanceInfo("decode-silent", Phase.DECODE, "a100-80g"))
        await wait_until_listed(client, "decode-silent", True)
        await wait_until_listed(client, "decode-silent", False)
        assert "decode-live" in await listed(client)
        assert telemetry.upkeep is not None and telemetry.upkeep.expired == ["decode-silent"]


@pytest.mark.integration
async def test_reports_name_the_instances_telemetry_does_not_know() -> None:
    async with (
        TelemetryService(TelemetrySettings(security=SECURITY)) as telemetry,
        TelemetryClient(telemetry.address, security=SECURITY) as client,
    ):
        await client.register_instance(InstanceInfo("known", Phase.DECODE, "a100-80g"))
        states = [
            InstanceState(instance_id=i, phase=Phase.DECODE, gpu_key="a100-80g", sm_clock_mhz=0)
            for i in ("known", "ghost", "ghost")
        ]
        result = await client.report_instance_samples(states)
        assert (result.accepted, result.rejected) == (1, 2)
        assert result.unknown_instance_ids == ("ghost",)


class FlakyStore(MemoryTelemetryStore):
    """The memory store with a switch that makes it unreachable, on a clock the test moves."""

    def __init__(self) -> None:
        self.now_s = 1000.0
        super().__init__(clock=lambda: self.now_s)
        self.down = False

    async def ping(self) -> None:
        if self.down:
            raise TelemetryStoreError("redis failed to answer PING: connection refused")


@pytest.mark.unit
async def test_silence_during_a_store_outage_does_not_expire_instances() -> None:
    store = FlakyStore()
    forgotten: list[str] = []
    health: list[bool] = []

    async def forget(instance_id: str) -> bool:
        forgotten.append(instance_id)
        return await store.unregister_instance(instance_id)

    async def on_health(serving: bool) -> None:
        health.append(serving)

    upkeep = TelemetryUpkeep(
        store, forget=forget, on_health=on_health, interval_s=1.0, instance_ttl_s=10.0
    )
    await store.register_instance(InstanceInfo("decode-0", Phase.DECODE, "a100-80g"))
    await upkeep.check_once()
    store.down, store.now_s = True, 1001.0
    await upkeep.check_once()
    store.down, store.now_s = False, 1030.0  # 29 s silent, all but 1 s of it an outage
    await upkeep.check_once()
    assert forgotten == [] and health == [True, False, True]

    store.now_s = 1041.0  # a full TTL since the store came back
    await upkeep.check_once()
    assert forgotten == ["decode-0"] == upkeep.expired


# ---- completed vs failed ---------------------------------------------------------------------


def completion(request_id: str, ok: bool, status: str, finished_at_s: float) -> Completion:
    placed = status not in ("INVALID_ARGUMENT",)
    return Completion(
        request_id=request_id,
        prefill_id="prefill-0" if placed else "",
        decode_id="decode-0" if placed else "",
        input_tokens=10,
        output_tokens=5 if ok else 0,
        ttft_ms=50.0 if ok else None,
        mean_itl_ms=10.0 if ok else None,
        ok=ok,
        finished_at_s=finished_at_s,
        reason="length" if ok else status.lower(),
        status=status,
    )


@pytest.mark.integration
async def test_aggregates_separate_completed_from_failed_by_status() -> None:
    async with (
        TelemetryService(TelemetrySettings(security=SECURITY)) as telemetry,
        TelemetryClient(telemetry.address, security=SECURITY) as client,
    ):
        await client.register_instance(InstanceInfo("decode-0", Phase.DECODE, "a100-80g"))
        now_s = time.time()
        records = [
            completion("a", True, "OK", now_s),
            completion("b", True, "OK", now_s),
            completion("c", False, "UNAVAILABLE", now_s),
            completion("d", False, "INVALID_ARGUMENT", now_s),  # refused before placement
            completion("e", False, "UNAVAILABLE", now_s),
        ]
        for record in [*records, records[0], records[2]]:  # two retried reports
            await client.report_completion(record)
        report = await client.window_report(60.0)

    cluster = report.cluster
    assert (cluster.finished, cluster.completed, cluster.failed) == (5, 2, 3)
    assert cluster.failed_by_status == {"INVALID_ARGUMENT": 1, "UNAVAILABLE": 2}
    decode = report.instances["decode-0"]
    assert (decode.completed, decode.failed) == (2, 2)


@pytest.mark.integration
async def test_the_redis_store_keeps_a_retried_completion_once(
    restartable_redis: RestartableRedis,
) -> None:
    settings = TelemetrySettings(redis_url=restartable_redis.url, security=SECURITY)
    async with TelemetryService(settings) as telemetry:
        record = completion("a", True, "OK", time.time())
        await telemetry.store.record_completion(record)
        await telemetry.store.record_completion(record)
        aggregates = await telemetry.store.aggregates(None, 60.0)
    assert (aggregates.finished, aggregates.completed) == (1, 1)
