"""Secrets: the control-plane token (loading, `voltana token`), Redis passwords (against a real
redis-server with requirepass, and over TLS) and that no password reaches a log or an error."""

from __future__ import annotations

import asyncio
import logging
import socket
import stat
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from security_helpers import SECURITY, Pki

from voltana.cli.main import main
from voltana.cli.serve_cmd import serve_until_signal
from voltana.contract.state import Phase
from voltana.errors import ConfigError, FailedPreconditionError, VoltanaError
from voltana.rpc import RpcSecurity, load_token
from voltana.rpc.auth import LEGACY_TOKEN_ENV, TOKEN_ENV
from voltana.services.telemetry import (
    InstanceInfo,
    TelemetryClient,
    TelemetryService,
    TelemetrySettings,
)
from voltana.services.telemetry.errors import TelemetryStoreAuthError
from voltana.services.telemetry.redis_url import redact_redis_url
from voltana.stack import SimStackSettings

pytestmark = pytest.mark.integration

PASSWORD = "redis-pass-" + uuid.uuid4().hex


# ---- the control-plane token ------------------------------------------------------------------


def test_token_comes_from_a_file_or_the_environment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file-0123456789\n")
    assert load_token(token_file, environ={TOKEN_ENV: "ignored-0123456789abc"}) == (
        "from-the-file-0123456789"
    )
    assert load_token(None, environ={TOKEN_ENV: "from-the-env-0123456789 "}) == (
        "from-the-env-0123456789"
    )
    assert load_token(None, environ={}) is None
    with caplog.at_level(logging.WARNING):
        assert load_token(None, environ={LEGACY_TOKEN_ENV: "legacy-token-0123456789"}) == (
            "legacy-token-0123456789"
        )
    assert any(TOKEN_ENV in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("tiny-tok", "too short"),
        ("has spaces in the middle", "without spaces"),
        ("é" * 20, "ASCII"),
    ],
)
def test_weak_or_unusable_tokens_are_refused_without_echo(token: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as refused:
        RpcSecurity(token=token)
    assert token not in str(refused.value)


def test_the_token_is_not_in_reprs() -> None:
    assert SECURITY.token is not None
    assert SECURITY.token not in repr(SECURITY)
    assert SECURITY.token not in repr(SimStackSettings(security=SECURITY))


def test_voltana_token_prints_a_fresh_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token"]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["token"]) == 0
    second = capsys.readouterr().out.strip()
    assert len(first) >= 40 and first != second
    RpcSecurity(token=first)  # usable as it is


def test_voltana_token_writes_a_private_env_file_for_compose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("VOLTANA_POLICY=voltana\nHF_TOKEN=hf_abc\n")
    assert main(["token", "--env-file", str(env_file)]) == 0
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert values["VOLTANA_POLICY"] == "voltana" and values["HF_TOKEN"] == "hf_abc"
    token, password = values["VOLTANA_CONTROL_TOKEN"], values["VOLTANA_REDIS_PASSWORD"]
    RpcSecurity(token=token)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    output = capsys.readouterr()
    assert token not in output.out + output.err and password not in output.out + output.err
    # Again: nothing changes (services keep working); --rotate replaces both.
    assert main(["token", "--env-file", str(env_file)]) == 0
    assert env_file.read_text().count("VOLTANA_CONTROL_TOKEN=") == 1
    assert f"VOLTANA_CONTROL_TOKEN={token}" in env_file.read_text()
    assert main(["token", "--env-file", str(env_file), "--rotate"]) == 0
    rotated = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert rotated["VOLTANA_CONTROL_TOKEN"] != token
    assert rotated["VOLTANA_REDIS_PASSWORD"] != password
    assert rotated["HF_TOKEN"] == "hf_abc"


def test_voltana_token_rotate_needs_an_env_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--rotate"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ---- Redis passwords -----------------------------------------------------------------------------


def info(instance_id: str) -> InstanceInfo:
    return InstanceInfo(instance_id=instance_id, phase=Phase.DECODE, gpu_key="a100-80g")


def redis_settings(url: str, password: str | None = None) -> TelemetrySettings:
    return TelemetrySettings(
        redis_url=url,
        redis_password=password,
        redis_key_prefix=f"test:{uuid.uuid4().hex}:",
        security=SECURITY,
    )


async def register_through(settings: TelemetrySettings) -> None:
    async with (
        TelemetryService(settings) as service,
        TelemetryClient(service.address, security=SECURITY) as client,
    ):
        await client.register_instance(info("decode-0"))
        assert set(await service.store.instance_infos()) == {"decode-0"}


async def test_redis_with_a_password_in_the_url_or_separately(
    start_redis_server: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = start_redis_server("--requirepass", PASSWORD)
    plain = f"redis://{server.host}:{server.port}/0"
    with_password = f"redis://:{PASSWORD}@{server.host}:{server.port}/0"
    await register_through(redis_settings(with_password))
    await register_through(redis_settings(plain, password=PASSWORD))
    # Logged, but redacted.
    assert any("redis at redis://:***@" in record.getMessage() for record in caplog.records)
    assert not any(PASSWORD in record.getMessage() for record in caplog.records)


async def test_a_wrong_or_missing_password_fails_at_start_without_showing_it(
    start_redis_server: Callable[..., Any],
) -> None:
    server = start_redis_server("--requirepass", PASSWORD)
    wrong = "wrong-" + PASSWORD
    for settings in (
        redis_settings(f"redis://:{wrong}@{server.host}:{server.port}/0"),
        redis_settings(f"redis://{server.host}:{server.port}/0", password=wrong),
        redis_settings(f"redis://{server.host}:{server.port}/0"),
    ):
        service = TelemetryService(settings)
        with pytest.raises(VoltanaError) as failed:
            await service.start()
        await service.stop()
        assert wrong not in str(failed.value) and PASSWORD not in str(failed.value)
        assert wrong not in repr(settings)


def test_redis_urls_are_checked_and_redacted() -> None:
    assert redact_redis_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact_redis_url("rediss://user:s3cret@[::1]:6380/2?ssl_ca_certs=/ca.pem") == (
        "rediss://user:***@[::1]:6380/2?ssl_ca_certs=/ca.pem"
    )
    assert redact_redis_url("redis://redis:6379/0") == "redis://redis:6379/0"
    for url, problem in [
        ("http://:s3cret@redis:6379/0", "must start with"),
        ("redis://:s3cret@:6379/0", "names no host"),
        ("redis://:s3cret@redis:99999/0", "bad Redis URL"),
    ]:
        with pytest.raises(ConfigError, match=problem) as refused:
            TelemetrySettings(redis_url=url)
        assert "s3cret" not in str(refused.value)
    with pytest.raises(ConfigError, match="use one of them"):
        TelemetrySettings(redis_url="redis://:a@redis:6379/0", redis_password="b")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_redis_over_tls_with_a_password(
    start_redis_server: Callable[..., Any], tmp_path: Path
) -> None:
    pki = Pki(tmp_path / "pki")
    redis_identity = pki.issue("redis")
    tls_port = _free_port()
    server = start_redis_server(
        "--requirepass", PASSWORD,
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(redis_identity.cert_file),
        "--tls-key-file", str(redis_identity.key_file),
        "--tls-ca-cert-file", str(pki.ca_file),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    url = f"rediss://{server.host}:{tls_port}/0?ssl_ca_certs={pki.ca_file}"
    await register_through(redis_settings(url, password=PASSWORD))


async def test_a_password_that_stops_working_ends_telemetry_with_one_clear_error(
    start_redis_server: Callable[..., Any],
) -> None:
    """Redis restarted with another password: retrying cannot heal that, so `voltana serve
    telemetry` stops and exits 2 with the reason, rather than serving NOT_SERVING forever."""
    server = start_redis_server("--requirepass", PASSWORD)
    url = f"redis://{server.host}:{server.port}/0"
    settings = replace(redis_settings(url, password=PASSWORD), upkeep_interval_s=0.1)
    service = TelemetryService(settings)
    serving = asyncio.create_task(serve_until_signal(service, "telemetry"))
    try:
        while service.upkeep is None or service.upkeep.healthy is not True:
            assert not serving.done(), serving
            await asyncio.sleep(0.05)
        admin = aioredis.Redis(host=server.host, port=server.port, password=PASSWORD)
        await admin.config_set("requirepass", "another-" + PASSWORD)
        await admin.client_kill_filter(_type="normal", skipme=True)
        await admin.aclose()
        with pytest.raises(TelemetryStoreAuthError) as failed:
            await asyncio.wait_for(serving, timeout=60.0)
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
    message = str(failed.value)
    assert "refused telemetry's credentials" in message and "--redis-password-file" in message
    assert PASSWORD not in message
    with pytest.raises(FailedPreconditionError):
        await service.start()  # it stopped
