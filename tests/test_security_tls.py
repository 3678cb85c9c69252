"""TLS and mutual TLS on every gRPC server and client, with certificates made in the test: a
client without a valid certificate is refused, one with it works; certificate identities bind
leases; the whole stack runs on mTLS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from security_helpers import SECURITY, TEST_TOKEN, Identity, Pki

from voltana.cli.main import build_parser
from voltana.cli.security_opts import security_from_args
from voltana.errors import ConfigError
from voltana.gpu import SimulatedGpu
from voltana.hardware import get_gpu
from voltana.rpc import RpcSecurity, TlsFiles, create_channel
from voltana.rpc.auth import TOKEN_ENV
from voltana.sdk import VoltanaClient
from voltana.services.agent import AgentService, AgentSettings
from voltana.services.telemetry import TelemetryClient, TelemetryService, TelemetrySettings
from voltana.stack import SimStack, SimStackSettings
from voltana.v1 import agent_pb2, agent_pb2_grpc, telemetry_pb2, telemetry_pb2_grpc

pytestmark = pytest.mark.integration

A100 = get_gpu("a100-80g")
CONNECT_TIMEOUT_S = 3.0


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def mtls(identity: Identity, token: str | None = TEST_TOKEN) -> RpcSecurity:
    return RpcSecurity(token=token, tls=identity.tls())


@pytest.fixture
async def telemetry(pki: Pki) -> AsyncIterator[TelemetryService]:
    settings = TelemetrySettings(security=mtls(pki.issue("telemetry")))
    async with TelemetryService(settings) as service:
        yield service


async def snapshot_over(address: str, security: RpcSecurity | None) -> None:
    async with create_channel(address, security=security) as channel:
        await telemetry_pb2_grpc.TelemetryServiceStub(channel).GetSnapshot(
            telemetry_pb2.GetSnapshotRequest(), timeout=CONNECT_TIMEOUT_S
        )


async def test_a_client_with_a_certificate_of_the_ca_is_served(
    telemetry: TelemetryService, pki: Pki
) -> None:
    client_security = mtls(pki.issue("router"))
    await snapshot_over(telemetry.address, client_security)
    async with TelemetryClient(telemetry.address, security=client_security) as client:
        await client.wait_until_ready(CONNECT_TIMEOUT_S)
        snapshot = await client.snapshot()
    assert snapshot.prefill == {} and snapshot.decode == {}


async def test_clients_without_a_valid_certificate_are_refused(
    telemetry: TelemetryService, pki: Pki, tmp_path: Path
) -> None:
    stranger_ca = Pki(tmp_path / "stranger", name="stranger-ca")
    refused = [
        None,  # plaintext
        RpcSecurity(tls=TlsFiles(ca_file=str(pki.ca_file))),  # TLS, but no client certificate
        # A certificate from another CA (it trusts our server, but we do not trust it).
        RpcSecurity(tls=stranger_ca.issue("intruder").tls(ca_file=pki.ca_file)),
    ]
    for security in refused:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await snapshot_over(telemetry.address, security)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_server_outside_the_ca_is_not_trusted(pki: Pki, tmp_path: Path) -> None:
    impostor_ca = Pki(tmp_path / "impostor", name="impostor-ca")
    settings = TelemetrySettings(security=mtls(impostor_ca.issue("telemetry")))
    async with TelemetryService(settings) as impostor:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await snapshot_over(impostor.address, mtls(pki.issue("controller")))
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_token_is_still_required_under_tls(telemetry: TelemetryService, pki: Pki) -> None:
    async with create_channel(telemetry.address, security=mtls(pki.issue("x"), None)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await telemetry_pb2_grpc.TelemetryServiceStub(channel).UnregisterInstance(
                telemetry_pb2.UnregisterInstanceRequest(instance_id="decode-0")
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_certificate_identities_bind_leases(pki: Pki) -> None:
    """Same token, same holder id, different certificates: a different principal."""
    gpu = SimulatedGpu(A100, 0, clock_change_delay_ms=0)
    settings = AgentSettings(security=mtls(pki.issue("agent")))
    selector = agent_pb2.GpuSelector(gpu_index=0)
    async with AgentService(settings, devices=[gpu]) as agent:
        async with create_channel(agent.address, security=mtls(pki.issue("controller-a"))) as a:
            await agent_pb2_grpc.NodeAgentServiceStub(a).SetClocks(
                agent_pb2.SetClocksRequest(gpu=selector, sm_clock_mhz=1005, requested_by="ctl")
            )
        async with create_channel(agent.address, security=mtls(pki.issue("other"))) as b:
            stub = agent_pb2_grpc.NodeAgentServiceStub(b)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ResetClocks(
                    agent_pb2.ResetClocksRequest(gpu=selector, requested_by="ctl")
                )
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "cert:controller-a" in (refused.value.details() or "")
            assert gpu.sm_clock_mhz() == 1005


def test_tls_files_are_checked(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both a certificate and its key"):
        TlsFiles(cert_file="a.crt")
    with pytest.raises(ConfigError, match="needs a certificate and key, a CA, or both"):
        TlsFiles()
    with pytest.raises(ConfigError, match="cannot read the TLS CA"):
        TlsFiles(ca_file=str(tmp_path / "missing.pem")).channel_credentials()


async def test_a_server_without_its_certificate_fails_at_start(pki: Pki) -> None:
    settings = TelemetrySettings(
        security=RpcSecurity(token=TEST_TOKEN, tls=TlsFiles(ca_file=str(pki.ca_file)))
    )
    service = TelemetryService(settings)
    with pytest.raises(ConfigError, match="TLS server needs a certificate"):
        await service.start()
    await service.stop()


@pytest.mark.e2e
async def test_the_whole_stack_runs_on_mtls(pki: Pki) -> None:
    """Telemetry, controller, router and agents: every server and client on mTLS. The stack
    only comes up when agents' GPU samples reached telemetry and the router saw them."""
    security = mtls(pki.issue("voltana"), SECURITY.token)
    settings = SimStackSettings(
        prefill=1, decode=1, speedup=10.0, policy="static:1005", security=security
    )
    async with SimStack(settings) as stack:
        client = VoltanaClient(stack.router_address, timeout_s=20.0, tls=pki.issue("user").tls())
        async with client:
            result = await client.generate("over mTLS", max_new_tokens=4, stream=False)
        assert result.summary.completion_tokens == 4
        # The controller reached the agents over mTLS and set the policy's clock.
        deadline = time.monotonic() + 10.0
        while {instance.gpu.sm_clock_mhz() for instance in stack.instances} != {1005}:
            assert time.monotonic() < deadline, "the controller never set the clocks"
            await asyncio.sleep(0.05)
        # A plaintext client is not served.
        with pytest.raises(grpc.aio.AioRpcError):
            await snapshot_over(stack.telemetry_address, None)


def test_tls_flags_reach_every_command(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    identity = pki.issue("voltana")
    flags = [
        "--tls-cert", str(identity.cert_file),
        "--tls-key", str(identity.key_file),
        "--tls-ca", str(pki.ca_file),
    ]  # fmt: skip
    expected = identity.tls()
    monkeypatch.setenv(TOKEN_ENV, TEST_TOKEN)
    parser = build_parser()
    for command in (
        ["serve", "telemetry"],
        ["serve", "controller"],
        ["serve", "router"],
        ["serve", "agent", "--backend", "sim"],
        ["serve", "engine", "--telemetry", "telemetry:50052"],
        ["serve", "instance", "--engine-url", "http://e:30000", "--instance-id", "d", "--mode",
         "decode"],
    ):  # fmt: skip
        args = parser.parse_args([*command, *flags])
        service = args.build(args)
        assert service.settings.security.tls == expected, command  # type: ignore[attr-defined]
    for command in (["up", "--sim"], ["bench", "--target", "r:1", "--trace", "t.csv"]):
        args = parser.parse_args([*command, *flags])
        assert security_from_args(args, required=False).tls == expected, command
