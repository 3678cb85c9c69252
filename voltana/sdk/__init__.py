"""Client SDK of Voltana: submit requests to the router and stream their tokens.

    from voltana.sdk import VoltanaClient

    async with VoltanaClient("127.0.0.1:50051") as client:
        async for event in client.generate("Hello", max_new_tokens=32):
            print(event)

``SyncVoltanaClient`` offers the same from plain (non-async) code.
"""

from voltana.sdk.client import VoltanaClient
from voltana.sdk.errors import (
    AuthenticationError,
    DeadlineExceededError,
    InvalidRequestError,
    RequestCancelledError,
    ServerError,
    UnavailableError,
    VoltanaClientError,
)
from voltana.sdk.stream import GenerationStream
from voltana.sdk.sync_client import SyncVoltanaClient
from voltana.sdk.types import (
    CandidateInfo,
    GenerationResult,
    GenerationSummary,
    PlacementInfo,
    TokenEvent,
)

__all__ = [
    "AuthenticationError",
    "CandidateInfo",
    "DeadlineExceededError",
    "GenerationResult",
    "GenerationStream",
    "GenerationSummary",
    "InvalidRequestError",
    "PlacementInfo",
    "RequestCancelledError",
    "ServerError",
    "SyncVoltanaClient",
    "TokenEvent",
    "UnavailableError",
    "VoltanaClient",
    "VoltanaClientError",
]
