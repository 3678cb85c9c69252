"""Fixtures shared by every test module: real servers that tests talk to over loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
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
            return sock.recv(64).startswith(b"+PONG")
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
    binary: str, workdir: Path, port: int | None = None
) -> tuple[subprocess.Popen[bytes], RedisServer]:
    """Start redis-server on ``port`` (default: a free loopback port; retried when another
    process takes it)."""
    log_path = workdir / "redis.log"
    for _ in range(_REDIS_START_ATTEMPTS):
        server = RedisServer("127.0.0.1", port or _free_port())
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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real, throwaway redis-server (no persistence) for the whole test session.

    Tests share it, so each test should use its own key prefix.
    """
    process, server = _start_redis(_redis_binary(), tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RestartableRedis:
    """A redis-server of one test that can be killed (SIGKILL) and started again, empty, on
    the same port: what a crashed, non-persistent Redis looks like to its clients."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self._binary = binary
        self._workdir = workdir
        self._process, self.server = _start_redis(binary, workdir)

    @property
    def url(self) -> str:
        return self.server.url

    def kill(self) -> None:
        self._process.kill()
        self._process.wait()

    def restart(self) -> None:
        self._process, self.server = _start_redis(self._binary, self._workdir, self.server.port)

    def stop(self) -> None:
        if self._process.poll() is None:
            self.kill()


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    """A redis-server of this test alone, to kill and restart."""
    redis = RestartableRedis(_redis_binary(), tmp_path)
    try:
        yield redis
    finally:
        redis.stop()


async def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    """A loopback TCP port nobody listens on (now)."""
    return _free_port()
