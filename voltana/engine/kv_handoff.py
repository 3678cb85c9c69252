"""Simulated PD KV-cache transfer over the prefill engine's bootstrap port.

Real SGLang: the prefill server runs a bootstrap server on ``--disaggregation-bootstrap-port``;
the decode server finds the prefill through ``bootstrap_host:bootstrap_port`` and the KV cache of a
request travels (Mooncake/NIXL) under its ``bootstrap_room``.

Here: the prefill engine keeps prefilled requests in a ``KvMailbox`` by room, and serves
``GET /kv/{room}?timeout_s=...`` on its bootstrap port. The decode engine long-polls that
endpoint; the answer comes once the prefill is done *and* the simulated transfer
(KV bytes / ``GpuSpec.kv_transfer_gb_s``) has elapsed, so the transfer starts when both sides are
ready, as in SGLang. Being plain HTTP, it works for engines in one process or in many.
Transfers do not contend for bandwidth with each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
from aiohttp import web

from voltana.engine.errors import EngineError, EngineTimeoutError
from voltana.engine.protocol import error_body

logger = logging.getLogger(__name__)

# Extra wall time the decode's HTTP call may take beyond the long-poll itself.
_HTTP_GRACE_S = 5.0
_RECONNECT_PAUSE_S = 0.05


@dataclass(frozen=True, slots=True)
class KvHandoff:
    """What a prefill hands its decode: the prompt's KV cache (sizes only) and the first token."""

    room: int
    prompt_tokens: int
    first_token_id: int
    kv_bytes: float
    # Simulated seconds the transfer takes.
    transfer_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: Any) -> KvHandoff:
        try:
            return cls(
                room=int(body["room"]),
                prompt_tokens=int(body["prompt_tokens"]),
                first_token_id=int(body["first_token_id"]),
                kv_bytes=float(body["kv_bytes"]),
                transfer_s=float(body["transfer_s"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(f"malformed KV handoff from the bootstrap server: {exc}") from None


class KvRoomAbortedError(EngineError):
    """The prefill of a room was cancelled or aborted, so its KV cache will never come."""


class KvMailbox:
    """Prefill side: KV caches by bootstrap room, until their decode claims them.

    A room's entry is created by whichever comes first, the prefill result or the decode's claim.
    Results nobody claims are dropped after ``retention_s`` (wall seconds).
    """

    def __init__(self, retention_s: float) -> None:
        self.retention_s = retention_s
        self._rooms: dict[int, asyncio.Future[KvHandoff]] = {}
        self._expiry: dict[int, asyncio.TimerHandle] = {}
        self._closed_reason: str | None = None

    def __len__(self) -> int:
        """Rooms with a result (KV ready or aborted) that no decode has claimed yet."""
        return sum(1 for future in self._rooms.values() if future.done())

    def _entry(self, room: int) -> asyncio.Future[KvHandoff]:
        future = self._rooms.get(room)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._rooms[room] = future
        return future

    def _schedule_expiry(self, room: int, future: asyncio.Future[KvHandoff]) -> None:
        loop = asyncio.get_running_loop()
        self._expiry[room] = loop.call_later(self.retention_s, self._expire, room, future)

    def _expire(self, room: int, future: asyncio.Future[KvHandoff]) -> None:
        if self._rooms.get(room) is future:
            del self._rooms[room]
            logger.debug("KV of bootstrap room %d was never claimed; dropped", room)
        self._expiry.pop(room, None)

    def _discard(self, room: int, future: asyncio.Future[KvHandoff]) -> None:
        if self._rooms.get(room) is future:
            del self._rooms[room]
            timer = self._expiry.pop(room, None)
            if timer is not None:
                timer.cancel()

    def publish(self, handoff: KvHandoff) -> None:
        """The prefill of ``handoff.room`` is done: its KV can be transferred."""
        future = self._entry(handoff.room)
        if future.done():  # a duplicate room: the newest prefill wins
            self._discard(handoff.room, future)
            future = self._entry(handoff.room)
        future.set_result(handoff)
        self._schedule_expiry(handoff.room, future)

    def abort(self, room: int, reason: str) -> None:
        """The prefill of ``room`` will not finish; a decode waiting for it fails at once."""
        future = self._entry(room)
        if future.done():
            return
        future.set_exception(KvRoomAbortedError(f"prefill of bootstrap room {room} {reason}"))
        future.exception()  # mark retrieved: nobody may ever claim it
        self._schedule_expiry(room, future)

    def reopen(self) -> None:
        """Accept claims again after ``close`` (the engine restarts)."""
        self._closed_reason = None

    def close(self, reason: str) -> None:
        """Fail every pending claim and every later one (the prefill engine is stopping)."""
        self._closed_reason = reason
        for room, future in list(self._rooms.items()):
            if not future.done():
                future.set_exception(KvRoomAbortedError(f"bootstrap room {room}: {reason}"))
                future.exception()
        for timer in self._expiry.values():
            timer.cancel()
        self._expiry.clear()

    async def claim(self, room: int, timeout_s: float) -> KvHandoff:
        """Wait up to ``timeout_s`` for the KV of ``room`` and take it out of the mailbox.

        Raises ``EngineTimeoutError`` when it does not come, ``KvRoomAbortedError`` when its
        prefill was aborted.
        """
        if self._closed_reason is not None:
            raise KvRoomAbortedError(f"bootstrap room {room}: {self._closed_reason}")
        future = self._entry(room)
        try:
            handoff = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            if not future.done():
                self._discard(room, future)
            raise EngineTimeoutError(
                f"no KV cache for bootstrap room {room} within {timeout_s:g} s", status=504
            ) from None
        except KvRoomAbortedError:
            self._discard(room, future)
            raise
        self._discard(room, future)
        return handoff


def build_bootstrap_app(
    mailbox: KvMailbox,
    wall_duration_s: Callable[[float], float],
    middlewares: Sequence[Any] = (),
) -> web.Application:
    """The bootstrap server of a prefill engine. ``wall_duration_s`` maps simulated to wall s;
    ``middlewares`` (e.g. tracing) wrap its handlers."""

    async def get_kv(request: web.Request) -> web.Response:
        try:
            room = int(request.match_info["room"])
            timeout_s = float(request.query.get("timeout_s", mailbox.retention_s))
        except ValueError:
            return web.json_response(
                error_body("room and timeout_s must be numbers", 400), status=400
            )
        try:
            handoff = await mailbox.claim(room, max(0.0, timeout_s))
        except EngineTimeoutError as exc:
            return web.json_response(error_body(exc.message, 404), status=404)
        except KvRoomAbortedError as exc:
            return web.json_response(error_body(exc.message, 410), status=410)
        await asyncio.sleep(wall_duration_s(handoff.transfer_s))
        return web.json_response(handoff.to_json())

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=list(middlewares))
    app.router.add_get("/kv/{room}", get_kv)
    app.router.add_get("/health", health)
    return app


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def fetch_kv(
    session: aiohttp.ClientSession, host: str, port: int, room: int, timeout_s: float
) -> KvHandoff:
    """Decode side: wait for the KV cache of ``room`` from the prefill at ``host:port``.

    Retries while the bootstrap server cannot be reached (it may be starting), until
    ``timeout_s`` wall seconds have passed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    url = f"http://{_bracket(host)}:{port}/kv/{room}"
    last_error = ""
    while True:
        remaining_s = deadline - loop.time()
        if remaining_s <= 0:
            detail = f" (last error: {last_error})" if last_error else ""
            raise EngineTimeoutError(
                f"timed out after {timeout_s:g} s waiting for the KV cache of bootstrap room "
                f"{room} from {host}:{port}{detail}",
                status=504,
            )
        try:
            async with session.get(
                url,
                params={"timeout_s": f"{remaining_s:.3f}"},
                timeout=aiohttp.ClientTimeout(total=remaining_s + _HTTP_GRACE_S),
            ) as response:
                body = await response.json(content_type=None)
                if response.status == 200:
                    return KvHandoff.from_json(body)
                message = _error_message(body)
                if response.status == 404:  # nothing within the long-poll; the loop times out
                    continue
                if response.status == 410:
                    raise KvRoomAbortedError(message, status=502)
                raise EngineError(
                    f"bootstrap server {host}:{port} answered {response.status}: {message}",
                    status=502,
                )
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Unreachable (not started yet?) or a garbled answer: try again until the deadline.
            last_error = str(exc) or type(exc).__name__
            await asyncio.sleep(min(_RECONNECT_PAUSE_S, max(0.0, deadline - loop.time())))


def _error_message(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
    return str(body)
