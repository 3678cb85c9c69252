"""`voltana up --sim` and `voltana serve` as real subprocesses: addresses out, clean exit on
SIGINT/SIGTERM, one-line errors."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import grpc.aio
import pytest

from voltana.cli.main import build_parser
from voltana.cli.up_cmd import chosen_ports, settings_from_args
from voltana.rpc import RpcSecurity, create_channel
from voltana.rpc.auth import LEGACY_TOKEN_ENV, TOKEN_ENV
from voltana.sdk import VoltanaClient
from voltana.stack.ports import port_in_use
from voltana.v1 import controller_pb2, controller_pb2_grpc

pytestmark = pytest.mark.e2e

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


TOKEN = "cli-test-control-token-0123456789"
# Tests run beside others: any free ports, not the well-known ones `up` prefers.
ANY_PORTS = ("--router-port", "0", "--telemetry-port", "0", "--controller-port", "0")
ANY_PORTS += ("--http-port", "0")


async def voltana(*args: str, token: str | None = None) -> asyncio.subprocess.Process:
    """``voltana ARGS`` with $VOLTANA_CONTROL_TOKEN set to ``token`` (unset when None)."""
    env = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, LEGACY_TOKEN_ENV)}
    if token is not None:
        env[TOKEN_ENV] = token
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voltana.cli.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
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
        *ANY_PORTS,
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
    assert addresses["router.http"].startswith("http://127.0.0.1:")
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
    # Authentication is on although nobody asked for it: `up` made a token of its own.
    request = controller_pb2.SetPolicyRequest(policy_name="static:210")
    for security, code in [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        (RpcSecurity(token=TOKEN), grpc.StatusCode.PERMISSION_DENIED),
    ]:
        async with create_channel(addresses["controller"], security=security) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await controller_pb2_grpc.ControllerServiceStub(channel).SetPolicy(request)
            assert refused.value.code() == code
    up_process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(up_process.wait(), STOP_TIMEOUT_S) == 0


async def test_up_takes_a_given_token_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    process = await voltana(
        "up", "--sim", "--prefill", "1", "--decode", "1", "--speedup", "10",
        "--log-level", "WARNING", "--token-file", str(token_file), *ANY_PORTS,
    )  # fmt: skip
    try:
        addresses = await read_addresses(process)
        # The operator's token opens the privileged calls.
        async with create_channel(
            addresses["controller"], security=RpcSecurity(token=TOKEN)
        ) as channel:
            reply = await controller_pb2_grpc.ControllerServiceStub(channel).SetPolicy(
                controller_pb2.SetPolicyRequest(policy_name="static:1005")
            )
        assert reply.decode_policy_name == "static:1005"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_up_takes_the_well_known_ports_the_readme_bench_line_dials() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    bench = re.search(r"voltana bench --target (\S+) --telemetry (\S+)", readme)
    assert bench is not None
    args = build_parser().parse_args(["up", "--sim"])
    ports, notes = chosen_ports(args, is_free=lambda host, port: True)
    assert notes == []
    assert bench.groups() == (f"127.0.0.1:{ports['router']}", f"127.0.0.1:{ports['telemetry']}")
    assert ports == {"router": 50051, "telemetry": 50052, "controller": 50053, "router.http": 8000}
    no_http = build_parser().parse_args(["up", "--sim", "--no-http"])
    assert chosen_ports(no_http, is_free=lambda host, port: True)[0]["router.http"] == 0


def test_extra_routers_never_take_the_next_services_well_known_port() -> None:
    args = build_parser().parse_args(["up", "--sim", "--routers", "3"])
    ports, _ = chosen_ports(args, is_free=lambda host, port: True)
    settings = settings_from_args(args, ports)
    # Router 1 would be 50052 (telemetry's) and router 2 50053 (the controller's): free ports.
    assert [settings.router_port_of(i, settings.router_port) for i in range(3)] == [50051, 0, 0]
    assert [settings.router_port_of(i, settings.http_port or 0) for i in range(3)] == [
        8000,
        8001,
        8002,
    ]
    assert not {50052, 50053} & {
        port for name, port in settings.fixed_ports().items() if name.startswith("router")
    }


def test_a_busy_well_known_port_falls_back_to_a_free_one_and_says_so() -> None:
    args = build_parser().parse_args(["up", "--sim", "--telemetry-port", "0"])
    ports, notes = chosen_ports(args, is_free=lambda host, port: port != 50051)
    assert ports == {"router": 0, "telemetry": 0, "controller": 50053, "router.http": 8000}
    (note,) = notes
    assert "50051" in note and "router" in note


def test_port_in_use_tells_a_held_port_from_a_free_one() -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        assert port_in_use("127.0.0.1", port) is not None
    assert port_in_use("127.0.0.1", port) is None


async def test_up_on_a_busy_port_fails_fast_in_one_line() -> None:
    """Nothing starts (no engine, agent or telemetry logs) when a requested port is taken."""
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        process = await voltana("up", "--sim", *ANY_PORTS, "--router-port", str(port))
        stdout, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT_S)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"router port {port}" in lines[0] and "in use" in lines[0]
    assert stdout == b""


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


@pytest.mark.parametrize("insecure", [False, True], ids=["token", "insecure-no-auth"])
async def test_serve_telemetry_runs_until_sigterm(insecure: bool) -> None:
    """With the token, or with authentication turned off on purpose (and a loud warning)."""
    flags = ["--insecure-no-auth"] if insecure else []
    process = await voltana(
        "serve",
        "telemetry",
        "--listen",
        "127.0.0.1:0",
        "--metrics-port",
        "0",
        *flags,
        token=None if insecure else TOKEN,
    )
    try:
        assert process.stderr is not None
        seen: list[str] = []
        while not seen or "running" not in seen[-1]:
            line = (await asyncio.wait_for(process.stderr.readline(), START_TIMEOUT_S)).decode()
            assert line, "voltana serve telemetry ended early"
            seen.append(line)
        assert " INFO voltana.serve: telemetry running" in seen[-1]
        warned = any(" WARNING " in line and "authentication is OFF" in line for line in seen)
        assert warned == insecure
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_serve_needs_a_token_or_an_explicit_opt_out() -> None:
    process = await voltana("serve", "telemetry", "--listen", "127.0.0.1:0")
    stdout, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT_S)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and TOKEN_ENV in lines[0] and "--insecure-no-auth" in lines[0]
    assert stdout == b""


async def test_serve_rejects_bad_settings_in_one_line() -> None:
    process = await voltana(
        "serve", "controller", "--telemetry", "127.0.0.1:1", "--lease-ttl-ms", "10", token=TOKEN
    )
    _, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT_S)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "lease_ttl_ms" in lines[0]
