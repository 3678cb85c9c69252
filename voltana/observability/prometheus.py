"""Prometheus exposition: one HTTP ``/metrics`` endpoint per service, over that service's registry.

Every service builds its own ``CollectorRegistry`` (never prometheus_client's global default
one), so services started side by side in one process (``voltana up``) keep their metrics
apart, and nothing is registered at import time. ``MetricsServer`` serves one registry on
``GET /metrics`` with aiohttp (the asyncio server the services already run), negotiating the
OpenMetrics format when the scraper asks for it.

Names follow the Prometheus conventions: a ``voltana_<service>_`` prefix, base units as suffix
(``_seconds``, ``_watts``, ``_joules``, ``_hertz``), ``_total`` on counters, ``_info`` for
constant label sets. See docs/observability.md for the full list.
"""

from __future__ import annotations

import logging
import socket

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from voltana.errors import ConfigError, FailedPreconditionError
from voltana.lifecycle import AsyncService
from voltana.rpc import dialable_address

_LOG = logging.getLogger(__name__)
METRICS_PATH = "/metrics"


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets) as (host, port); ConfigError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ConfigError(f"metrics address must be host:port, got {address!r}")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"metrics address {address!r} has no port number") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"metrics port must be in 0..65535, got {number}")
    return host.strip("[]") or "0.0.0.0", number


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as error:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {error.strerror}") from None


class MetricsServer(AsyncService):
    """``GET /metrics`` of ``registry`` on ``listen_address`` ("host:port"; port 0 = any free)."""

    def __init__(self, registry: CollectorRegistry, listen_address: str) -> None:
        self._registry = registry
        self._listen_address = listen_address
        self._host, self._requested_port = split_host_port(listen_address)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def registry(self) -> CollectorRegistry:
        return self._registry

    @property
    def port(self) -> int:
        if self._port is None:
            raise FailedPreconditionError("the metrics server is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port/metrics`` a scraper can reach (loopback for wildcard binds)."""
        return f"http://{dialable_address(self._listen_address, self.port)}{METRICS_PATH}"

    async def start(self) -> None:
        if self._runner is not None:
            raise FailedPreconditionError("the metrics server is already started")
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._handle_metrics)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            sock = _listen(self._host, self._requested_port)
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(sock.getsockname()[1])
        _LOG.info("Prometheus metrics on %s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self._registry)
        return web.Response(body=body, headers={"Content-Type": content_type})


async def start_metrics_server(
    registry: CollectorRegistry, listen_address: str | None
) -> MetricsServer | None:
    """A started ``MetricsServer``, or None when ``listen_address`` is None (metrics off)."""
    if listen_address is None:
        return None
    server = MetricsServer(registry, listen_address)
    await server.start()
    return server
