"""Fixtures shared by every test module: real servers that tests talk to over loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

_REDIS_START_ATTEMPTS = 3
_REDIS_READY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            # NOAUTH: up, and asking for its password.
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def _redis_binary() -> str:
    configured = os.environ.get("VOLTANA_REDIS_SERVER")
    binary = configured or shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).is_file():
        pytest.fail(
            f"redis-server not found (looked for {binary!r}); install it "
            "(Debian/Ubuntu: apt-get install redis-server) or set VOLTANA_REDIS_SERVER",
            pytrace=False,
        )
    return binary


def _start_redis(
    binary: str, workdir: Path, extra_args: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], RedisServer]:
    """Start redis-server on a free loopback port; retry when another process takes the port."""
    log_path = workdir / "redis.log"
    for _ in range(_REDIS_START_ATTEMPTS):
        server = RedisServer("127.0.0.1", _free_port())
        # Logs go to a file: a full pipe could block the server.
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    binary,
                    "--port", str(server.port),
                    "--bind", server.host,
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(workdir),
                    *extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + _REDIS_READY_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if _redis_answers_ping(server.host, server.port):
                return process, server
            time.sleep(0.02)
        process.kill()
        process.wait()
    log_tail = log_path.read_text(errors="replace")[-2000:]
    pytest.fail(f"redis-server did not answer PING; its log:\n{log_tail}", pytrace=False)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real, throwaway redis-server (no persistence) for the whole test session.

    Tests share it, so each test should use its own key prefix.
    """
    process, server = _start_redis(_redis_binary(), tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        _stop(process)


@pytest.fixture
def start_redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Starts a throwaway redis-server with extra arguments (e.g. ``--requirepass``); each one
    is stopped after the test."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*extra_args: str) -> RedisServer:
        process, server = _start_redis(_redis_binary(), tmp_path, extra_args)
        processes.append(process)
        return server

    try:
        yield start
    finally:
        for process in processes:
            _stop(process)
