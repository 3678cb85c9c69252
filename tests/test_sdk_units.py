"""SDK pieces without sockets: request building and status → error mapping."""

from __future__ import annotations

import grpc
import pytest

from voltana import errors
from voltana.sdk import (
    DeadlineExceededError,
    InvalidRequestError,
    RequestCancelledError,
    ServerError,
    UnavailableError,
)
from voltana.sdk.errors import client_error_from_rpc
from voltana.sdk.messages import build_request

pytestmark = pytest.mark.unit


class FailedCall(grpc.RpcError):
    """What a failed call looks like to the SDK: a status code and details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.CANCELLED, RequestCancelledError),
        (grpc.StatusCode.INTERNAL, ServerError),
        (grpc.StatusCode.UNKNOWN, ServerError),
    ],
)
def test_status_codes_map_to_sdk_errors(code: grpc.StatusCode, expected: type) -> None:
    error = client_error_from_rpc(FailedCall(code, "details here"))
    assert type(error) is expected
    assert error.code == code and "details here" in str(error)
    assert isinstance(error, errors.VoltanaError)


def test_sdk_errors_are_also_the_shared_kinds() -> None:
    error = client_error_from_rpc(FailedCall(grpc.StatusCode.UNAVAILABLE, "down"))
    assert isinstance(error, errors.UnavailableError)


def test_build_request_sets_only_given_fields() -> None:
    request = build_request(
        "hello",
        input_ids=None,
        max_new_tokens=None,
        temperature=None,
        top_p=0.9,
        ignore_eos=True,
        stop="END",  # a lone string is one stop string
        ttft_slo_ms=None,
        itl_slo_ms=40.0,
        request_id=None,
    )
    assert request.text == "hello" and request.WhichOneof("prompt") == "text"
    assert not request.HasField("max_new_tokens") and not request.HasField("temperature")
    assert request.top_p == pytest.approx(0.9) and request.ignore_eos
    assert list(request.stop) == ["END"] and request.request_id == ""
    assert (request.slo.ttft_ms, request.slo.itl_ms) == (0.0, 40.0)


def test_build_request_with_token_ids() -> None:
    request = build_request(
        None,
        input_ids=[3, 4],
        max_new_tokens=8,
        temperature=0.0,
        top_p=None,
        ignore_eos=False,
        stop=None,
        ttft_slo_ms=None,
        itl_slo_ms=None,
        request_id="abc",
    )
    assert list(request.input_ids.ids) == [3, 4] and request.max_new_tokens == 8
    assert request.HasField("temperature") and request.temperature == 0.0
    assert not request.HasField("slo") and request.request_id == "abc"
