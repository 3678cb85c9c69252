"""The router's side: placements its instances' reports may not show yet, and its own arrival
rates, laid over telemetry's latest report of each instance."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Protocol

from voltana.contract.state import InstanceState
from voltana.observation import ArrivalWindow, InflightLedger


class OtherRouters(Protocol):
    """What the other active-active routers placed on one instance (summed), as telemetry
    passes it on."""

    @property
    def inflight_requests(self) -> int: ...
    @property
    def inflight_tokens(self) -> int: ...
    @property
    def arrival_rate_rps(self) -> float: ...
    @property
    def arrival_tokens_per_s(self) -> float: ...


class PlacementBook:
    """Every request this router placed, until the instances' reports include it, and the
    arrivals it sent each instance over the observation window."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._ledger = InflightLedger()
        self._arrivals: dict[str, ArrivalWindow] = {}

    def __len__(self) -> int:
        return len(self._ledger)

    def place(
        self,
        request_id: Hashable,
        prefill_id: str,
        decode_id: str,
        input_tokens: int,
        now_s: float,
    ) -> None:
        """``request_id`` goes to this pair: counted on both until their reports include it
        (the decode instance holds the prompt's KV and the first token). A colocated instance
        (named twice) counts it once, as a prompt to prefill."""
        self._ledger.place(request_id, prefill_id, input_tokens)
        if decode_id == prefill_id:
            instance_ids: tuple[str, ...] = (prefill_id,)
        else:
            self._ledger.place(request_id, decode_id, input_tokens + 1)
            instance_ids = (prefill_id, decode_id)
        for instance_id in instance_ids:
            window = self._arrivals.get(instance_id)
            if window is None:
                window = self._arrivals[instance_id] = ArrivalWindow(self._window_s)
            window.add(now_s, input_tokens)

    def reached(self, request_id: Hashable, instance_id: str, at_s: float) -> None:
        """The instance holds the request from ``at_s`` (prefill: queued; decode: first token)."""
        self._ledger.visible(request_id, instance_id, at_s)

    def finished(self, request_id: Hashable) -> None:
        """The request ended (completed or failed): nothing of it is in flight any more."""
        self._ledger.forget(request_id)

    def reported(self, state: InstanceState) -> None:
        """A report of the instance arrived: what it includes leaves the ledger."""
        self._ledger.settle(state.instance_id, state.observed_at_s)

    def entries(self) -> list[tuple[str, int, float | None]]:
        """(instance id, tokens, visible since) of every placement still counted."""
        return self._ledger.entries()

    def arrival_rates(self, instance_id: str, now_s: float) -> tuple[float, float] | None:
        """(requests/s, prompt tokens/s) this router sent the instance lately (None: none)."""
        window = self._arrivals.get(instance_id)
        if window is None:
            return None
        return window.requests_per_s(now_s), window.tokens_per_s(now_s)

    def annotate(
        self, state: InstanceState, now_s: float, others: OtherRouters | None = None
    ) -> InstanceState:
        """The instance as the router places on it: the report, plus this router's placements
        not in it yet, plus the other routers' shares; arrivals are this router's own (fresher
        than the report's) plus the others'."""
        # One replace at most: the simulator annotates every instance on every arrival.
        requests, tokens = self._ledger.pending(state.instance_id, state.observed_at_s)
        rates = self.arrival_rates(state.instance_id, now_s)
        if rates is None:  # the report's rates: every router's
            requests_per_s, tokens_per_s = state.arrival_rate_rps, state.arrival_tokens_per_s
        else:
            requests_per_s, tokens_per_s = rates
            if others is not None:
                requests_per_s += others.arrival_rate_rps
                tokens_per_s += others.arrival_tokens_per_s
        if others is not None:
            requests += others.inflight_requests
            tokens += others.inflight_tokens
        if (requests, tokens, requests_per_s, tokens_per_s) == (
            state.inflight_requests,
            state.inflight_tokens,
            state.arrival_rate_rps,
            state.arrival_tokens_per_s,
        ):
            return state
        return dataclasses.replace(
            state,
            inflight_requests=requests,
            inflight_tokens=tokens,
            arrival_rate_rps=requests_per_s,
            arrival_tokens_per_s=tokens_per_s,
        )
