"""The HTTP door's limits: safe JSON, read timeouts, the per-client cap, OpenAI-style errors.

The door runs on loopback with a generate function of our own (the pipeline is
test_router_http.py's): what is checked here is what the door does before a request gets there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import pytest

from voltana import event_loop
from voltana.errors import ConfigError
from voltana.event_loop import EVENT_LOOPS
from voltana.services.router.http_api import RouterHttpApi
from voltana.services.router.http_fields import HttpRequestError
from voltana.services.router.http_limits import (
    HttpLimits,
    json_depth,
    json_shape,
    nesting_exceeds,
    parse_json_body,
)
from voltana.v1 import router_pb2

MODEL = "llama-3.1-8b"
# Generous: a busy host may be seconds late; a timeout that never fires is 60 s away.
CLOSE_DEADLINE_S = 20.0


class RecordingGenerate:
    """A GenerateFn: one token and a completion per request; keeps the requests it got."""

    def __init__(self) -> None:
        self.requests: list[router_pb2.GenerateRequest] = []
        self.shed: list[str] = []  # what the door's on_shed heard

    async def __call__(
        self, request: router_pb2.GenerateRequest, context: Any, *, protocol: str = "grpc"
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        self.requests.append(request)
        yield router_pb2.GenerateResponse(chunk=router_pb2.TokenChunk(text=" ka", token_ids=[7]))
        yield router_pb2.GenerateResponse(
            completion=router_pb2.Completion(
                finish_reason="length", prompt_tokens=1, completion_tokens=1
            )
        )


@contextlib.asynccontextmanager
async def door(limits: HttpLimits) -> AsyncIterator[tuple[RouterHttpApi, RecordingGenerate]]:
    generate = RecordingGenerate()
    api = RouterHttpApi(
        listen_address="127.0.0.1:0",
        generate=generate,
        served_model=MODEL,
        limits=limits,
        on_shed=generate.shed.append,
    )
    await api.start()
    try:
        yield api, generate
    finally:
        await api.stop()


async def post(url: str, data: bytes, path: str = "/v1/completions") -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, data=data, headers={"Content-Type": "application/json"}) as r,
    ):
        return r.status, await r.json(content_type=None)


async def closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """What the server sent before closing the connection (fails if it stays open)."""
    received = b""
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(ConnectionResetError):
        while time.monotonic() < deadline:
            chunk = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            if not chunk:
                return received
            received += chunk
    pytest.fail(f"the connection is still open after {timeout_s} s")
    return received  # pragma: no cover


def host_port(api: RouterHttpApi) -> tuple[str, int]:
    host, _, port = api.url.removeprefix("http://").rpartition(":")
    return host, int(port)


# ---- pure parts ----------------------------------------------------------------------------


@pytest.mark.unit
def test_nesting_is_measured_without_recursion() -> None:
    assert not nesting_exceeds(b'{"a": [[1, 2], {"b": []}]}', 4)  # 4 levels
    assert nesting_exceeds(b'{"a": [[1, 2], {"b": [[]]}]}', 4)
    assert not nesting_exceeds(b"{[{[{[]}]}]}", 6) and nesting_exceeds(b"{[{[{[]}]}]}", 5)
    # Brackets inside strings do not nest; escaped quotes do not end a string.
    assert not nesting_exceeds(b'{"text": "[[[[[[[[ \\" [[[[[["}', 2)
    assert nesting_exceeds(b"[" * 100_000 + b"]" * 100_000, 32)
    assert nesting_exceeds(b"[" * 100_000, 32)  # unbalanced: refused all the same
    assert not nesting_exceeds(b"[" + b"[]," * 50_000 + b"[]]", 2)  # wide, not deep
    # Brackets in strings are not containers either.
    assert json_shape(b'[{"a": "[[{{"}, [], "]]"]') == (2, 3)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    return 0


def _random_value(rng: random.Random, depth: int) -> Any:
    tricky = ["[", "]", "{", "}", '"', "\\", '\\"', "[[\\", "x", "é"]
    if depth == 0 or rng.random() < 0.3:
        return rng.choice(["".join(rng.choices(tricky, k=rng.randint(0, 6))), 1, None, 2.5])
    if rng.random() < 0.5:
        return [_random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {
        "".join(rng.choices(tricky, k=3)): _random_value(rng, depth - 1)
        for _ in range(rng.randint(0, 3))
    }


@pytest.mark.unit
def test_json_depth_is_exact_with_brackets_quotes_and_backslashes_in_strings() -> None:
    rng = random.Random(5)
    for _ in range(300):
        value = _random_value(rng, rng.randint(0, 8))
        raw = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        assert json_depth(raw) == _depth(value), raw


@pytest.mark.unit
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper than 32"),
        (b"[" + b"[]," * 60_000 + b"[]]", "holds 60002 arrays and objects, the limit is 50000"),
        (b'{"prompt": "\xff\xfe"}', "not valid UTF-8"),
        (b'{"max_tokens": NaN}', "not valid JSON"),
        (b'{"max_tokens": Infinity}', "not valid JSON"),
        (b'{"max_tokens": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"{not json", "not valid JSON"),
    ],
)
def test_bodies_that_are_not_json_values_are_400(raw: bytes, message: str) -> None:
    with pytest.raises(HttpRequestError, match=message) as caught:
        parse_json_body(raw, HttpLimits())
    assert caught.value.status == 400


@pytest.mark.unit
def test_limits_refuse_nonsense() -> None:
    for bad in (
        {"max_body_bytes": 0},
        {"header_timeout_s": 0.0},
        {"body_timeout_s": float("nan")},
        {"keepalive_timeout_s": -1.0},
        {"max_connections_per_client": -1},
    ):
        with pytest.raises(ConfigError):
            HttpLimits(**bad)  # type: ignore[arg-type]


# ---- over loopback -------------------------------------------------------------------------


@pytest.mark.integration
async def test_unknown_paths_wrong_methods_and_big_bodies_get_openai_errors() -> None:
    async with door(HttpLimits(max_body_bytes=1000)) as (api, generate):
        async with aiohttp.ClientSession() as session:
            async with session.get(api.url + "/v1/nothing") as response:
                assert response.status == 404
                error = (await response.json())["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert "no such endpoint: GET /v1/nothing" in error["message"]
            async with session.get(api.url + "/v1/completions") as response:
                assert response.status == 405 and response.headers["Allow"] == "POST"
                assert "GET is not allowed" in (await response.json())["error"]["message"]
            async with session.get(api.url + f"/v1/models/{MODEL}") as response:
                assert response.status == 200
                assert (await response.json())["id"] == MODEL
            async with session.get(api.url + "/v1/models/gpt-4") as response:
                assert response.status == 404
                assert (await response.json())["error"]["param"] == "model"
        body = json.dumps({"prompt": "x" * 2000}).encode()
        status, answer = await post(api.url, body)
        assert status == 413 and "the limit is 1000" in answer["error"]["message"]
        # Without a Content-Length (chunked), the limit holds as the body arrives.

        async def chunks() -> AsyncIterator[bytes]:
            yield body

        async with (
            aiohttp.ClientSession() as session,
            session.post(api.url + "/v1/completions", data=chunks()) as response,
        ):
            assert response.status == 413
        status, answer = await post(api.url, b'{"prompt": "fits", "max_tokens": 3}')
        assert status == 200 and answer["choices"][0]["text"] == " ka"
        assert len(generate.requests) == 1  # only the good one reached the pipeline


@pytest.mark.integration
async def test_idle_partial_header_and_partial_body_connections_are_shed() -> None:
    limits = HttpLimits(header_timeout_s=1.0, body_timeout_s=1.0, keepalive_timeout_s=1.5)
    async with door(limits) as (api, generate):
        host, port = host_port(api)
        idle = await asyncio.open_connection(host, port)
        partial_header = await asyncio.open_connection(host, port)
        partial_header[1].write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        partial_body = await asyncio.open_connection(host, port)
        partial_body[1].write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"prompt": '
        )
        started = time.monotonic()
        # A real request meanwhile is served.
        status, _ = await post(api.url, b'{"prompt": "hello", "max_tokens": 2}')
        assert status == 200
        assert await closed_within(idle[0], CLOSE_DEADLINE_S) == b""
        assert await closed_within(partial_header[0], CLOSE_DEADLINE_S) == b""
        answered = await closed_within(partial_body[0], CLOSE_DEADLINE_S)
        assert answered.startswith(b"HTTP/1.1 408")
        assert b'"timeout_error"' in answered and b"within 1 s" in answered
        # Each waited at least its own timeout (never shed early).
        assert time.monotonic() - started >= 1.0
        assert api.guard is not None and api.guard.shed_total == 3
        assert sorted(generate.shed) == ["idle", "slow_body", "slow_headers"]
        for _, writer in (idle, partial_header, partial_body):
            writer.close()


@pytest.mark.integration
async def test_a_slow_but_steady_client_within_the_timeouts_is_served() -> None:
    limits = HttpLimits(header_timeout_s=30.0, body_timeout_s=30.0)
    async with door(limits) as (api, _):
        reader, writer = await asyncio.open_connection(*host_port(api))
        body = b'{"prompt": "hello", "max_tokens": 2}'
        request = (
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        for start in range(0, len(request), 20):
            writer.write(request[start : start + 20])
            await asyncio.sleep(0.01)
        answer = await closed_within(reader, CLOSE_DEADLINE_S)
        assert answer.startswith(b"HTTP/1.1 200")
        writer.close()


@pytest.mark.integration
@pytest.mark.parametrize("loop_name", EVENT_LOOPS)
def test_connections_per_client_are_capped(loop_name: str) -> None:
    """On both event loops a service can run on (uvloop's transports are not asyncio's: the
    cap once failed there with an AssertionError and let every connection in)."""
    event_loop.run(_connections_per_client_are_capped(), loop_name)


async def _connections_per_client_are_capped() -> None:
    async with door(HttpLimits(max_connections_per_client=3)) as (api, generate):
        assert api.guard is not None
        host, port = host_port(api)
        held = [await asyncio.open_connection(host, port) for _ in range(3)]
        deadline = time.monotonic() + CLOSE_DEADLINE_S
        while api.guard.open_connections("127.0.0.1") < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(host, port)
        refused = await closed_within(reader, CLOSE_DEADLINE_S)
        assert refused.startswith(b"HTTP/1.1 429")
        assert json.loads(refused.partition(b"\r\n\r\n")[2])["error"]["code"] == 429
        writer.close()
        # One of them goes: a new connection is served again.
        held[0][1].close()
        while api.guard.open_connections("127.0.0.1") > 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        status, _ = await post(api.url, b'{"prompt": "hello", "max_tokens": 2}')
        assert status == 200
        assert api.guard.refused_total == 1 and generate.shed == ["over_cap"]
        for _, held_writer in held[1:]:
            held_writer.close()


UNPARSEABLE = [
    ("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
    ("header line of 100 KB", b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"),
    (
        "Content-Length twice",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\n\r\n{}",
    ),
    (
        "bad chunk size",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n",
    ),
]


@pytest.mark.integration
@pytest.mark.parametrize(("case", "raw"), UNPARSEABLE, ids=[c[0] for c in UNPARSEABLE])
async def test_what_aiohttp_cannot_parse_is_answered_with_a_json_400(case: str, raw: bytes) -> None:
    async with door(HttpLimits()) as (api, generate):
        reader, writer = await asyncio.open_connection(*host_port(api))
        writer.write(raw)
        answer = await closed_within(reader, CLOSE_DEADLINE_S)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400", answer[:200]
        assert b"application/json" in head
        error = json.loads(body)["error"]
        assert error["code"] == 400 and error["type"] == "invalid_request_error"
        assert error["message"]
        # The door still serves.
        status, _ = await post(api.url, b'{"prompt": "hello", "max_tokens": 2}')
        assert status == 200 and len(generate.requests) == 1
