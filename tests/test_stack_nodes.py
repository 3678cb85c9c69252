"""The per-container pieces compose runs: a simulated engine node (engine + co-hosted agent,
registered with telemetry) and the reporter that brings a real SGLang server into telemetry
(exercised against the simulated engine, which speaks SGLang's HTTP and metrics)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from security_helpers import SECURITY

from voltana.contract.state import InstanceState, Phase
from voltana.engine import SglangHttpClient, SimEngine, SimEngineSettings
from voltana.errors import ConfigError
from voltana.services.agent import AgentService
from voltana.services.telemetry import TelemetryClient, TelemetryService, TelemetrySettings
from voltana.stack import EngineNode, EngineNodeSettings
from voltana.stack.sglang_reporter import SglangInstanceReporter, SglangInstanceSettings

pytestmark = pytest.mark.integration

WAIT_TIMEOUT_S = 5.0


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_TIMEOUT_S
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def telemetry() -> AsyncIterator[tuple[TelemetryService, TelemetryClient]]:
    async with (
        TelemetryService(TelemetrySettings(security=SECURITY)) as service,
        TelemetryClient(service.address, security=SECURITY) as client,
    ):
        yield service, client


async def test_engine_node_registers_engine_and_agent_and_unregisters_on_stop(
    telemetry: tuple[TelemetryService, TelemetryClient],
) -> None:
    service, client = telemetry
    node = EngineNode(
        EngineNodeSettings(
            engine=SimEngineSettings(
                mode="prefill", instance_id="prefill-7", speedup=10.0, report_interval_ms=50.0
            ),
            advertise_host="127.0.0.1",
            telemetry_address=service.address,
            agent_listen_address="127.0.0.1:0",
            gpu_index=3,
            sample_interval_ms=50,
            security=SECURITY,
        )
    )
    await node.start()
    try:
        assert node.engine is not None and node.agent is not None

        async def registered_with_gpu_sample() -> bool:
            snapshot, infos = await client.snapshot_with_endpoints()
            state = snapshot.prefill.get("prefill-7")
            return state is not None and state.sm_clock_mhz > 0 and "prefill-7" in infos

        await eventually(registered_with_gpu_sample, "registration and a GPU sample")
        _, infos = await client.snapshot_with_endpoints()
        info = infos["prefill-7"]
        assert info.engine_url == f"http://127.0.0.1:{node.engine.port}"
        assert (info.bootstrap_host, info.bootstrap_port) == (
            "127.0.0.1",
            node.engine.bootstrap_port,
        )
        assert info.agent_address == f"127.0.0.1:{node.agent.port}"
        assert info.gpu_index == 3
        # The agent holds the engine's own GPU: locking it slows this very engine.
        agent: AgentService = node.agent
        assert agent.devices == [node.gpu]
    finally:
        await node.stop()
    snapshot = await client.snapshot()
    assert "prefill-7" not in snapshot.prefill


async def test_engine_node_serves_its_agent_without_telemetry() -> None:
    """What `voltana profile` needs: an engine and the agent of its GPU(s), nothing else."""
    node = EngineNode(
        EngineNodeSettings(
            engine=SimEngineSettings(mode="null", tp=2),
            agent_listen_address="127.0.0.1:0",
            security=SECURITY,
        )
    )
    async with node:
        assert node.agent is not None and node.engine is not None
        assert [gpu.index for gpu in node.agent.devices] == [0, 1]
        assert node.engine.gpus == tuple(node.gpus)


async def test_sglang_reporter_registers_and_reports_scraped_load(
    telemetry: tuple[TelemetryService, TelemetryClient],
) -> None:
    service, client = telemetry
    async with (
        SimEngine(SimEngineSettings(mode="null", speedup=20.0, instance_id="sg")) as engine,
        SglangHttpClient() as http,
    ):
        reporter = SglangInstanceReporter(
            SglangInstanceSettings(
                telemetry_address=service.address,
                instance_id="decode-sg",
                phase=Phase.DECODE,
                engine_url=engine.url,
                agent_address="agent:50054",
                gpu_index=1,
                interval_ms=50,
                security=SECURITY,
            )
        )
        await reporter.start()
        try:
            _, infos = await client.snapshot_with_endpoints()
            info = infos["decode-sg"]
            assert info.engine_url == engine.url and info.agent_address == "agent:50054"
            assert info.kv_tokens_capacity == engine.core.kv_capacity_tokens > 0
            await http.generate(
                engine.url,
                {"input_ids": list(range(300)), "sampling_params": {"max_new_tokens": 20}},
            )

            reported: list[InstanceState] = []

            async def latencies_reported() -> bool:
                # Kept from the snapshot that showed it: a later one may find the window aged out.
                state = (await client.snapshot()).decode.get("decode-sg")
                if state is None or state.recent_ttft_ms is None:
                    return False
                reported.append(state)
                return True

            await eventually(latencies_reported, "TTFT from the scraped histogram")
            state = reported[-1]
            assert state.recent_ttft_ms is not None and state.recent_ttft_ms > 0
            assert state.kv_tokens_capacity == info.kv_tokens_capacity
            assert reporter.reports > 0
        finally:
            await reporter.stop()
    assert "decode-sg" not in (await client.snapshot()).decode


def test_sglang_settings_need_a_bootstrap_port_for_prefill() -> None:
    with pytest.raises(ConfigError, match="bootstrap"):
        SglangInstanceSettings(
            telemetry_address="t:1",
            instance_id="p",
            phase=Phase.PREFILL,
            engine_url="http://p:1",
            security=SECURITY,
        )
