"""`voltana up --sim` and `voltana serve` as real subprocesses: addresses out, clean exit on
SIGINT/SIGTERM, one-line errors."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from voltana.sdk import VoltanaClient

pytestmark = pytest.mark.e2e

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


async def voltana(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voltana.cli.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_addresses(process: asyncio.subprocess.Process) -> dict[str, str]:
    """The name/address lines `voltana up` prints, up to its closing comment line."""
    assert process.stdout is not None
    addresses: dict[str, str] = {}
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)).decode()
        if not line:
            stderr = await process.stderr.read() if process.stderr else b""
            raise AssertionError(f"voltana up ended early: {stderr.decode()[-2000:]}")
        if line.startswith("#"):
            return addresses
        name, address = line.split()
        addresses[name] = address


@pytest.fixture
async def up_process() -> AsyncIterator[asyncio.subprocess.Process]:
    process = await voltana(
        "up",
        "--sim",
        "--prefill",
        "1",
        "--decode",
        "1",
        "--speedup",
        "10",
        "--log-level",
        "WARNING",
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_up_prints_addresses_serves_and_exits_0_on_sigint(
    up_process: asyncio.subprocess.Process,
) -> None:
    addresses = await read_addresses(up_process)
    assert next(iter(addresses)) == "router"
    assert {"telemetry", "controller", "prefill-0.engine", "decode-0.agent"} <= set(addresses)
    metrics = {name for name in addresses if name.endswith(".metrics")}
    assert metrics == {
        "router.metrics",
        "telemetry.metrics",
        "controller.metrics",
        "prefill-0.agent.metrics",
        "decode-0.agent.metrics",
    }
    async with VoltanaClient(addresses["router"], timeout_s=20.0) as client:
        result = await client.generate("Hello from the test", max_new_tokens=5, stream=False)
    assert result.summary.completion_tokens == 5
    async with (
        aiohttp.ClientSession() as session,
        session.get(addresses["router.metrics"]) as response,
    ):
        assert response.status == 200
        exposition = await response.text()
    assert 'voltana_router_requests_total{protocol="grpc",status="OK"} 1.0' in exposition
    up_process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(up_process.wait(), STOP_TIMEOUT_S) == 0


async def test_up_exits_0_on_sigterm(up_process: asyncio.subprocess.Process) -> None:
    await read_addresses(up_process)
    up_process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(up_process.wait(), STOP_TIMEOUT_S) == 0


async def test_up_without_sim_explains_in_one_line() -> None:
    process = await voltana("up")
    stdout, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT_S)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "docker compose" in lines[0] and "--sim" in lines[0]
    assert stdout == b""


async def test_up_with_an_unknown_policy_fails_in_one_line() -> None:
    process = await voltana("up", "--sim", "--policy", "fastest", "--log-level", "ERROR")
    _, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT_S)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "fastest" in lines[0]


async def test_serve_telemetry_runs_until_sigterm() -> None:
    process = await voltana("serve", "telemetry", "--listen", "127.0.0.1:0", "--metrics-port", "0")
    try:
        assert process.stderr is not None
        while True:
            line = (await asyncio.wait_for(process.stderr.readline(), START_TIMEOUT_S)).decode()
            assert line, "voltana serve telemetry ended early"
            if "running" in line:
                break
        assert " INFO voltana.serve: telemetry running" in line
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_serve_rejects_bad_settings_in_one_line() -> None:
    process = await voltana(
        "serve", "controller", "--telemetry", "127.0.0.1:1", "--lease-ttl-ms", "10"
    )
    _, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT_S)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "lease_ttl_ms" in lines[0]
