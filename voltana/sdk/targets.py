"""The routers a client may send to: one channel each, their health, which one goes next.

Active-active routers sit behind one address (a load balancer) or are listed to the client.
With several listed, each one's gRPC health is watched (``Watch``, the router's service), so a
router that says NOT_SERVING (draining on SIGTERM, or without a placeable instance) stops
getting new requests at once; one whose call failed to start is skipped for ``cooldown_s``.
Requests go round-robin over the healthy ones; when none is, every one is tried anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace

from voltana.lifecycle import cancel_and_wait
from voltana.rpc import RpcSecurity, create_channel
from voltana.rpc.names import ROUTER_SERVICE
from voltana.v1 import router_pb2_grpc

# A router whose call could not start is skipped this long (unless no other one is left).
DEFAULT_COOLDOWN_S = 1.0
# A broken health watch is reopened after this pause.
_WATCH_RETRY_S = 0.25
# Reconnect within a few hundred milliseconds of a router coming back (gRPC's defaults grow
# the backoff to 120 s; a restarted router must get traffic again at once).
SDK_CHANNEL_OPTIONS: Mapping[str, Any] = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1_000,
}


@dataclass
class RouterTarget:
    address: str
    channel: grpc.aio.Channel
    stub: router_pb2_grpc.RouterServiceAsyncStub
    # The router's health as its watch last said (None: not known yet).
    serving: bool | None = None
    # Monotonic time until which the router is skipped after a call failed to start.
    cooling_until_s: float = 0.0
    watch: asyncio.Task[None] | None = field(default=None, repr=False)


def parse_targets(targets: str | Sequence[str]) -> list[str]:
    """``"host:port"``, ``"a:1,b:2"`` or a list of them, as a list (ValueError when empty)."""
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    addresses = [item.strip() for item in items if item.strip()]
    if not addresses:
        raise ValueError("at least one router target (host:port) is needed")
    for address in addresses:
        if ":" not in address:
            raise ValueError(f"router target must be host:port, got {address!r}")
    return list(dict.fromkeys(addresses))


class RouterTargets:
    """Channels to ``addresses``, made on first use inside the caller's event loop."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        channel_options: Mapping[str, Any] | None,
        security: RpcSecurity | None,
        tracer_provider: trace.TracerProvider | None,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
        watch_health: bool = True,
    ) -> None:
        """``watch_health`` (with several routers): follow each one's gRPC health; off, only
        failed calls (``failed_to_start``) keep a router out."""
        self.addresses = list(addresses)
        self._watch_health_on = watch_health and len(self.addresses) > 1
        self._channel_options = {**SDK_CHANNEL_OPTIONS, **(channel_options or {})}
        self._security = security
        self._tracer_provider = tracer_provider
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._targets: list[RouterTarget] = []
        self._next = 0

    @property
    def targets(self) -> Sequence[RouterTarget]:
        return self._targets

    def _open(self) -> list[RouterTarget]:
        if not self._targets:
            for address in self.addresses:
                channel = create_channel(
                    address,
                    options=self._channel_options,
                    security=self._security,
                    tracer_provider=self._tracer_provider,
                )
                target = RouterTarget(address, channel, router_pb2_grpc.RouterServiceStub(channel))
                if self._watch_health_on:  # one router: nothing to choose
                    target.watch = asyncio.create_task(
                        self._watch_health(target), name=f"voltana-sdk-health-{address}"
                    )
                self._targets.append(target)
        return self._targets

    def pick(self, tried: Sequence[RouterTarget] = ()) -> RouterTarget:
        """The next router for a call: round-robin over the healthy ones not ``tried`` yet;
        else the untried ones; else (every one tried) round-robin over all."""
        targets = self._open()
        now_s = self._clock()
        untried = [t for t in targets if t not in tried] or targets
        healthy = [t for t in untried if t.serving is not False and t.cooling_until_s <= now_s]
        candidates = healthy or untried
        target = candidates[self._next % len(candidates)]
        self._next += 1
        return target

    def failed_to_start(self, target: RouterTarget) -> None:
        """A call on ``target`` failed before any answer: skip it for a while."""
        target.cooling_until_s = self._clock() + self._cooldown_s

    async def _watch_health(self, target: RouterTarget) -> None:
        stub = health_pb2_grpc.HealthStub(target.channel)
        request = health_pb2.HealthCheckRequest(service=ROUTER_SERVICE)
        while True:
            try:
                async for response in stub.Watch(request):
                    serving = response.status == health_pb2.HealthCheckResponse.SERVING
                    target.serving = serving
                    if serving:
                        target.cooling_until_s = 0.0
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:  # no health service there
                    target.serving = None
                    return
            target.serving = False  # the watch ended: the router went away (or is stopping)
            await asyncio.sleep(_WATCH_RETRY_S)

    async def close(self) -> None:
        targets, self._targets = self._targets, []
        await cancel_and_wait([t.watch for t in targets if t.watch is not None])
        for target in targets:
            with contextlib.suppress(Exception):
                await target.channel.close()
