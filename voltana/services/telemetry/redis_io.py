"""How the Redis store talks to Redis: pipelines whose errors are sorted (a key of the wrong
type is the caller's to quarantine; anything else means the store cannot be used now)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from voltana.services.telemetry.codec import decode_json
from voltana.services.telemetry.errors import (
    CorruptTelemetryError,
    InvalidTelemetryError,
    TelemetryStoreAuthError,
    TelemetryStoreError,
)
from voltana.services.telemetry.records import Completion
from voltana.services.telemetry.validate import validate_completion

# Replies of a Redis that wants other credentials (the connection's AUTH/HELLO refused, or a
# command sent without them).
_AUTH_REPLIES = ("NOAUTH", "WRONGPASS")


def is_auth_error(exc: RedisError) -> bool:
    return isinstance(exc, AuthenticationError) or (
        isinstance(exc, ResponseError) and str(exc).startswith(_AUTH_REPLIES)
    )


def store_error(action: str, exc: RedisError) -> TelemetryStoreError:
    """What a Redis failure means for telemetry: credentials refused (no retry helps), or the
    store unusable for now."""
    if is_auth_error(exc):
        text = str(exc)
        # Redis 6+ answers a client without a password with a HELLO usage hint.
        why = "it wants a password" if text.startswith(("HELLO ", "NOAUTH")) else text
        return TelemetryStoreAuthError(
            f"redis refused telemetry's credentials ({why}): check the password in "
            "--redis-url, $VOLTANA_REDIS_PASSWORD or --redis-password-file"
        )
    return TelemetryStoreError(f"redis failed to {action}: {exc}")


@contextlib.contextmanager
def store_errors(action: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise store_error(action, exc) from exc


def texts(replies: Iterable[bytes | str]) -> list[str]:
    # The client decodes replies (decode_responses=True); this only satisfies the types.
    return [r.decode() if isinstance(r, bytes) else r for r in replies]


def is_wrong_type(reply: object) -> bool:
    """A reply saying the key holds another Redis type than the command works on."""
    return isinstance(reply, ResponseError) and str(reply).startswith("WRONGTYPE")


def is_missing(reply: object) -> bool:
    """XINFO STREAM's answer for a stream that does not exist (yet)."""
    return isinstance(reply, ResponseError) and "no such key" in str(reply)


def raise_failures(action: str, replies: list[Any]) -> list[Any]:
    """Pipeline replies (run with ``raise_on_error=False``); any error but a wrong key type
    (which the caller quarantines) or a missing stream means the store cannot be used now."""
    for reply in replies:
        if isinstance(reply, RedisError) and not (is_wrong_type(reply) or is_missing(reply)):
            raise store_error(action, reply)
    return replies


async def run_pipeline(
    redis: aioredis.Redis, action: str, queue: Callable[[Any], None]
) -> list[Any]:
    """Replies of the commands ``queue`` puts in one pipeline; a wrong key type comes back as
    its error, any other failure raises TelemetryStoreError."""
    with store_errors(action):
        async with redis.pipeline(transaction=False) as pipe:
            queue(pipe)
            return raise_failures(action, await pipe.execute(raise_on_error=False))


def decode_completion(text: str) -> Completion:
    """A stored completion, checked as ReportCompletion checks it (CorruptTelemetryError)."""
    completion = decode_json(Completion, text)
    try:
        validate_completion(completion)
    except InvalidTelemetryError as exc:
        raise CorruptTelemetryError(f"stored completion cannot be true: {exc}") from exc
    return completion
