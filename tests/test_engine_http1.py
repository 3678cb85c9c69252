"""The lean HTTP/1.1 client of the engines' streams (voltana.engine.http1) and the
SglangHttpClient streams on it: framing split anywhere, keep-alive reuse, a connection the
server closed while idle, the connection cap, errors, and closing a stream early."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from voltana.engine import EngineError, EngineUnavailableError, SglangHttpClient, http1

pytestmark = pytest.mark.integration

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(serve: Serve) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server on loopback running ``serve`` per connection; yields its URL and the
    connections it accepted (a list that grows)."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def sse(*events: bytes) -> bytes:
    return b"".join(b"data: " + event + b"\n\n" for event in events)


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
EVENTS = (b'{"output_ids": [1], "meta_info": {}}', b'{"output_ids": [2], "meta_info": {}}')


async def test_chunked_stream_split_at_every_byte_reads_the_same() -> None:
    body = STREAM_HEAD + chunked(sse(EVENTS[0]), sse(EVENTS[1]), sse(b"[DONE]"))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            for i in range(len(body)):  # one byte per write: framing split everywhere
                writer.write(body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)

    async with raw_server(serve) as (url, accepted), SglangHttpClient() as client:
        for _ in range(3):
            chunks = [chunk async for chunk in client.generate_stream(url, {"text": "x"})]
            assert [c["output_ids"] for c in chunks] == [[1], [2]]
        assert len(accepted) == 1  # one keep-alive connection for all three


async def test_backlog_comes_as_one_batch() -> None:
    body = STREAM_HEAD + chunked(sse(EVENTS[0]), sse(EVENTS[1]), sse(b"[DONE]"))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(body)  # all at once
        await writer.drain()
        await reader.read()

    async with raw_server(serve) as (url, _), SglangHttpClient() as client:
        batches = [b async for b in client.generate_stream_batches(url, {"text": "x"})]
    assert [[c["output_ids"] for c in batch] for batch in batches] == [[[1], [2]]]


async def test_content_length_body_and_read_to_close_body() -> None:
    payload = sse(EVENTS[0], b"[DONE]")
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload),
        b"HTTP/1.0 200 OK\r\n\r\n" + payload,  # ends when the server closes
    ]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answers.pop(0))
        await writer.drain()
        if not answers:
            return  # closes
        await read_request(reader)
        writer.write(answers.pop(0))
        await writer.drain()

    async with raw_server(serve) as (url, _), SglangHttpClient() as client:
        for _ in range(2):
            chunks = [chunk async for chunk in client.generate_stream(url, {"text": "x"})]
            assert [c["output_ids"] for c in chunks] == [[1]]


async def test_a_connection_closed_while_idle_is_replaced() -> None:
    body = STREAM_HEAD + chunked(sse(EVENTS[0], b"[DONE]"))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(body)
        await writer.drain()
        # Then close the kept-alive connection without a word, as an idle timeout does.

    async with raw_server(serve) as (url, accepted), SglangHttpClient() as client:
        for _ in range(3):
            chunks = [chunk async for chunk in client.generate_stream(url, {"text": "x"})]
            assert [c["output_ids"] for c in chunks] == [[1]]
        assert len(accepted) == 3


async def test_error_status_body_and_lost_connection_map_to_engine_errors() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        message = b'{"error": {"message": "bad sampling params"}}'
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(message))
        writer.write(message)
        await read_request(reader)
        writer.write(STREAM_HEAD + b"%x\r\n%s\r\n" % (len(sse(EVENTS[0])), sse(EVENTS[0])))
        await writer.drain()  # and then the connection drops mid-stream

    async with raw_server(serve) as (url, _), SglangHttpClient() as client:
        with pytest.raises(EngineError, match="bad sampling params") as bad:
            async for _ in client.generate_stream(url, {"text": "x"}):
                pass
        assert bad.value.status == 400
        seen = []
        with pytest.raises(EngineUnavailableError, match="connection lost"):
            async for chunk in client.generate_stream(url, {"text": "x"}):
                seen.append(chunk["output_ids"])
        assert seen == [[1]]


async def test_closing_a_stream_early_closes_its_connection() -> None:
    closed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(STREAM_HEAD + b"%x\r\n%s\r\n" % (len(sse(EVENTS[0])), sse(EVENTS[0])))
        await writer.drain()
        await reader.read()  # until the client hangs up
        closed.set()

    async with raw_server(serve) as (url, _), SglangHttpClient() as client:
        stream = client.generate_stream(url, {"text": "x"})
        assert (await anext(stream))["output_ids"] == [1]
        await stream.aclose()
        await asyncio.wait_for(closed.wait(), 5.0)


async def test_the_connection_cap_queues_requests_beyond_it() -> None:
    release = asyncio.Event()
    in_flight = 0
    most = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, most
        while True:
            await read_request(reader)
            in_flight += 1
            most = max(most, in_flight)
            await release.wait()
            writer.write(STREAM_HEAD + chunked(sse(EVENTS[0], b"[DONE]")))
            await writer.drain()
            in_flight -= 1

    async def one(client: SglangHttpClient, url: str) -> int:
        return len([chunk async for chunk in client.generate_stream(url, {"text": "x"})])

    async with raw_server(serve) as (url, _), SglangHttpClient(max_connections=2) as client:
        tasks = [asyncio.create_task(one(client, url)) for _ in range(5)]
        await asyncio.sleep(0.2)
        assert most == 2
        release.set()
        assert await asyncio.gather(*tasks) == [1] * 5
    assert most == 2


async def test_pool_refuses_other_schemes_and_times_out_reads() -> None:
    pool = http1.ConnectionPool(connect_timeout_s=1.0)
    with pytest.raises(ValueError, match="not an http"):
        await pool.request("POST", "ftp://127.0.0.1/x", b"", {})

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers

    async with raw_server(serve) as (url, _):
        with pytest.raises(TimeoutError):
            await pool.request("POST", url + "/generate", b"{}", {}, timeout_s=0.2)
    await pool.close()
