"""Baseline routers: round-robin and least-loaded, each side chosen independently."""

from __future__ import annotations

from collections.abc import Mapping

from voltana.contract.state import ClusterSnapshot, InstanceState, Placement, RequestSpec
from voltana.errors import VoltanaError


class NoInstanceError(VoltanaError):
    """The snapshot has no prefill or no decode instance to place on."""


def _require(instances: Mapping[str, InstanceState], phase: str) -> list[str]:
    if not instances:
        raise NoInstanceError(f"no {phase} instance available")
    return list(instances)


class RoundRobinRouter:
    name = "round-robin"

    def __init__(self) -> None:
        self._prefill_turn = 0
        self._decode_turn = 0

    def place(self, request: RequestSpec, snapshot: ClusterSnapshot) -> Placement:
        prefill_ids = _require(snapshot.prefill, "prefill")
        decode_ids = _require(snapshot.decode, "decode")
        prefill_id = prefill_ids[self._prefill_turn % len(prefill_ids)]
        decode_id = decode_ids[self._decode_turn % len(decode_ids)]
        self._prefill_turn += 1
        self._decode_turn += 1
        return Placement(prefill_id, decode_id, "round-robin")


def prefill_load(state: InstanceState) -> float:
    """Tokens the instance must prefill before a new request would start (the requests placed
    on it but not yet in its report included)."""
    return float(state.queued_tokens + state.running_prefill_tokens + state.inflight_tokens)


def decode_load(state: InstanceState) -> tuple[int, int]:
    return (
        state.running_batch + state.queue_len + state.inflight_requests,
        state.kv_tokens_used + state.inflight_tokens,
    )


class LeastLoadedRouter:
    """Fewest pending prefill tokens; fewest running+waiting decode requests (then least KV)."""

    name = "least-loaded"

    def place(self, request: RequestSpec, snapshot: ClusterSnapshot) -> Placement:
        _require(snapshot.prefill, "prefill")
        _require(snapshot.decode, "decode")
        prefill = min(snapshot.prefill.values(), key=prefill_load)
        decode = min(snapshot.decode.values(), key=decode_load)
        return Placement(prefill.instance_id, decode.instance_id, "least-loaded")
