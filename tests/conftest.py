"""Fixtures shared by every test module: real servers that tests talk to over loopback."""

from __future__ import annotations

import asyncio
import logging
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


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test another checkout's code: an editable install elsewhere (or a stale wheel)
    would otherwise be imported instead of the sources next to these tests."""
    import voltana

    root = Path(__file__).resolve().parent.parent
    found = Path(next(iter(voltana.__path__))).resolve()
    if found != root / "voltana":
        pytest.exit(
            f"voltana imports from {found}, not from this checkout ({root}): "
            f"run `python3 -m pip install -e '.[dev]'` here (or set PYTHONPATH={root})",
            returncode=4,
        )


@pytest.fixture(autouse=True)
def _drop_cli_log_handlers() -> Iterator[None]:
    """A CLI run in-process installs its log handler on the test's captured stderr; drop it
    afterwards, or later tests log into that closed stream ("Logging error")."""
    from voltana.observability.logs import LogFormatter

    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler.formatter, LogFormatter):
            root.removeHandler(handler)


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
    binary: str, workdir: Path, extra_args: Sequence[str] = (), port: int | None = None
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

    def terminate(self) -> None:
        """SIGTERM: a clean shutdown, which saves nothing (no persistence configured)."""
        self._process.terminate()
        self._process.wait()

    def restart(self) -> None:
        self._process, self.server = _start_redis(
            self._binary, self._workdir, port=self.server.port
        )

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


# ---- an OTLP trace receiver ------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as an OTLP collector received it, with its resource's service identity."""

    service_name: str
    service_instance_id: str
    name: str
    kind: int  # opentelemetry.proto.trace.v1 Span.SpanKind: 2 server, 3 client, 1 internal
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]
    status_code: int  # 0 unset, 1 ok, 2 error


class OtlpSink:
    """A real OTLP/gRPC trace receiver (TraceService.Export) on a loopback port.

    A plain threaded gRPC server, not asyncio: exporters call it from their own threads, and a
    test's event loop may be blocked in ``force_flush`` meanwhile.
    """

    def __init__(self) -> None:
        import threading
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        sink = self
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: object, context: object) -> object:
                sink._receive(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _receive(self, request: object) -> None:
        def value(any_value: object) -> object:
            field = any_value.WhichOneof("value")  # type: ignore[attr-defined]
            return getattr(any_value, field) if field else None

        received = []
        for resource_spans in request.resource_spans:  # type: ignore[attr-defined]
            resource = {kv.key: value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service_name=str(resource.get("service.name", "")),
                            service_instance_id=str(resource.get("service.instance.id", "")),
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={kv.key: value(kv.value) for kv in span.attributes},
                            status_code=span.status.code,
                        )
                    )
        with self._lock:
            self._spans.extend(received)

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()

    def stop(self) -> None:
        self._server.stop(grace=None)


@pytest.fixture(scope="module")
def otlp_sink() -> Iterator[OtlpSink]:
    sink = OtlpSink()
    try:
        yield sink
    finally:
        sink.stop()
