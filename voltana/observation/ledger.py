"""Requests placed on an instance but not yet visible in its report.

A placement is known to the router at once; the instance's report includes the request only
after it got there (prefill: the request reached the engine's queue; decode: the KV cache arrived
and the request joined the running batch) and the instance reported again. Until then the ledger
counts it, so a policy sees it exactly once. Used unchanged by the simulator and the live router.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, replace

from voltana.contract.state import ClusterSnapshot, InstanceState


@dataclass(slots=True)
class _Entry:
    tokens: int
    # When the instance started holding the request (None: not yet): its reports observed
    # at or after this time include it.
    visible_from_s: float | None = None


class InflightLedger:
    def __init__(self) -> None:
        # instance id -> request id -> entry; and request id -> instance ids (for forget).
        self._by_instance: dict[str, dict[Hashable, _Entry]] = {}
        self._instances_of: dict[Hashable, list[str]] = {}

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_instance.values())

    def place(self, request_id: Hashable, instance_id: str, tokens: int) -> None:
        """``request_id`` was placed on ``instance_id`` bringing ``tokens`` (prompt tokens on a
        prefill instance, KV tokens on a decode instance)."""
        self._by_instance.setdefault(instance_id, {})[request_id] = _Entry(tokens)
        self._instances_of.setdefault(request_id, []).append(instance_id)

    def visible(self, request_id: Hashable, instance_id: str, at_s: float) -> None:
        """The instance holds the request from ``at_s`` on (its later reports include it)."""
        entry = self._by_instance.get(instance_id, {}).get(request_id)
        if entry is not None and entry.visible_from_s is None:
            entry.visible_from_s = at_s

    def forget(self, request_id: Hashable) -> None:
        """The request ended (or failed): nothing of it is in flight any more."""
        for instance_id in self._instances_of.pop(request_id, ()):
            self._by_instance.get(instance_id, {}).pop(request_id, None)

    def settle(self, instance_id: str, reported_at_s: float) -> None:
        """Drop the instance's entries that its report observed at ``reported_at_s`` includes."""
        entries = self._by_instance.get(instance_id)
        if not entries:
            return
        settled = [
            request_id
            for request_id, entry in entries.items()
            if entry.visible_from_s is not None and entry.visible_from_s <= reported_at_s
        ]
        for request_id in settled:
            del entries[request_id]
            others = self._instances_of.get(request_id)
            if others is not None:
                others.remove(instance_id)
                if not others:
                    del self._instances_of[request_id]

    def entries(self) -> list[tuple[str, int, float | None]]:
        """Every request still counted: (instance id, tokens, visible from or None), e.g. to
        share with another router's ledger (``add``)."""
        return [
            (instance_id, entry.tokens, entry.visible_from_s)
            for instance_id, entries in self._by_instance.items()
            for entry in entries.values()
        ]

    def add(
        self, request_id: Hashable, instance_id: str, tokens: int, visible_from_s: float | None
    ) -> None:
        """Count a request another router placed (``entries`` of its ledger)."""
        self.place(request_id, instance_id, tokens)
        if visible_from_s is not None:
            self.visible(request_id, instance_id, visible_from_s)

    def pending(self, instance_id: str, reported_at_s: float) -> tuple[int, int]:
        """(requests, tokens) placed on the instance that a report observed at the given time
        does not include."""
        requests = tokens = 0
        for entry in self._by_instance.get(instance_id, {}).values():
            if entry.visible_from_s is None or entry.visible_from_s > reported_at_s:
                requests += 1
                tokens += entry.tokens
        return requests, tokens

    def annotate(self, state: InstanceState) -> InstanceState:
        requests, tokens = self.pending(state.instance_id, state.observed_at_s)
        if (requests, tokens) == (state.inflight_requests, state.inflight_tokens):
            return state
        return replace(state, inflight_requests=requests, inflight_tokens=tokens)

    def apply(self, snapshot: ClusterSnapshot) -> ClusterSnapshot:
        """The snapshot with every instance's in-flight requests filled in."""
        return ClusterSnapshot(
            snapshot.now_s,
            {key: self.annotate(state) for key, state in snapshot.prefill.items()},
            {key: self.annotate(state) for key, state in snapshot.decode.items()},
            unified={key: self.annotate(state) for key, state in snapshot.unified.items()},
        )
