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


# ---- several routers ---------------------------------------------------------------------


def test_targets_parse_from_a_list_or_a_comma_separated_string() -> None:
    from voltana.sdk.targets import parse_targets

    assert parse_targets("a:1, b:2,a:1") == ["a:1", "b:2"]
    assert parse_targets(["a:1", "b:2"]) == ["a:1", "b:2"]
    for bad, message in ((" , ", "at least one"), ("nohost", "host:port")):
        with pytest.raises(ValueError, match=message):
            parse_targets(bad)


def test_the_client_refuses_bad_retry_settings() -> None:
    from voltana.sdk import VoltanaClient

    with pytest.raises(ValueError, match="max_attempts"):
        VoltanaClient("a:1", max_attempts=0)
    with pytest.raises(ValueError, match="at least one"):
        VoltanaClient([])


async def test_picking_goes_round_robin_over_healthy_routers_and_falls_back_to_any() -> None:
    from voltana.sdk.targets import RouterTargets

    now = [0.0]
    targets = RouterTargets(
        ["a:1", "b:2", "c:3"],
        channel_options=None,
        security=None,
        tracer_provider=None,
        cooldown_s=1.0,
        clock=lambda: now[0],
        watch_health=False,  # health set by hand below
    )
    try:
        picked = [targets.pick().address for _ in range(3)]
        assert sorted(picked) == ["a:1", "b:2", "c:3"]
        a, b, c = targets.targets
        a.serving = False  # draining
        targets.failed_to_start(b)  # refused a call just now
        assert {targets.pick().address for _ in range(4)} == {"c:3"}
        # Not the one a request already tried, while another is left.
        assert targets.pick(tried=[c]).address in {"a:1", "b:2"}
        now[0] = 1.5  # b's cooldown is over
        assert {targets.pick().address for _ in range(4)} == {"b:2", "c:3"}
        # Every one tried: any of them again.
        assert targets.pick(tried=[a, b, c]).address in {"a:1", "b:2", "c:3"}
    finally:
        await targets.close()
