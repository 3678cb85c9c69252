"""The router's picture of the cluster: the latest telemetry snapshot plus its own placements.

Telemetry snapshots arrive every ``snapshot_interval_ms`` at best, and engines report their load
every few hundred milliseconds, so a burst of requests placed between two snapshots would all
see the same (stale) load and land on one instance. Each placement therefore bumps the load of
its instances optimistically (one more waiting prefill with its tokens; one more running decode
with its KV and output tokens). A bump ends once the instance has reported twice since the
placement (its own report then includes the request; one report may have been taken before it
arrived) or after ``optimistic_ttl_s``, whichever comes first.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from voltana.policy.state import ClusterSnapshot, InstanceState, Placement, RequestSpec
from voltana.services.router.errors import NoInstanceAvailableError
from voltana.services.telemetry.records import InstanceInfo

# Reports an instance must make after a placement before its bump is dropped.
REPORTS_TO_SETTLE = 2


@dataclass(frozen=True, slots=True)
class _Bump:
    """The optimistic load one placement adds to one instance."""

    instance_id: str
    created_s: float
    # The instance's report count when the bump was made.
    reports_at_creation: int
    queued_requests: int = 0
    queued_tokens: int = 0
    running_requests: int = 0
    kv_tokens: int = 0
    output_tokens: int = 0


def _apply(state: InstanceState, bumps: list[_Bump]) -> InstanceState:
    return dataclasses.replace(
        state,
        queue_len=state.queue_len + sum(b.queued_requests for b in bumps),
        queued_tokens=state.queued_tokens + sum(b.queued_tokens for b in bumps),
        running_batch=state.running_batch + sum(b.running_requests for b in bumps),
        kv_tokens_used=state.kv_tokens_used + sum(b.kv_tokens for b in bumps),
        remaining_output_tokens=(
            state.remaining_output_tokens + sum(b.output_tokens for b in bumps)
        ),
    )


class LiveCluster:
    """Latest snapshot and endpoints, with optimistic bumps; single event loop, no locks.

    ``clock`` is a monotonic wall clock (seconds); snapshot times stay on telemetry's clock.
    """

    def __init__(
        self,
        *,
        optimistic_ttl_s: float,
        stale_after_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._optimistic_ttl_s = optimistic_ttl_s
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._snapshot: ClusterSnapshot | None = None
        self._infos: Mapping[str, InstanceInfo] = {}
        self._received_s = 0.0
        self._report_counts: dict[str, int] = {}
        self._last_observed_s: dict[str, float] = {}
        self._bumps: list[_Bump] = []
        self._view: ClusterSnapshot | None = None  # routable snapshot with bumps; None = stale
        # Instances kept out of routing because their engine failed (see health.EngineHealth).
        self._ejected: dict[str, str] = {}

    @property
    def has_snapshot(self) -> bool:
        return self._snapshot is not None

    @property
    def latest(self) -> ClusterSnapshot | None:
        """The last snapshot as telemetry sent it (every instance, no bumps)."""
        return self._snapshot

    @property
    def snapshot_age_s(self) -> float | None:
        """Wall seconds since the last snapshot arrived (None before the first)."""
        return None if self._snapshot is None else self._clock() - self._received_s

    @property
    def pending_bumps(self) -> int:
        """Placements whose load is still added optimistically (per instance)."""
        self._expire_bumps()
        return len(self._bumps)

    def update(self, snapshot: ClusterSnapshot, infos: Mapping[str, InstanceInfo]) -> None:
        """Take a snapshot from telemetry (with the endpoints of its instances)."""
        for state in (*snapshot.prefill.values(), *snapshot.decode.values()):
            previous = self._last_observed_s.get(state.instance_id)
            if previous is None or state.observed_at_s > previous:
                self._report_counts[state.instance_id] = (
                    self._report_counts.get(state.instance_id, 0) + 1
                )
                self._last_observed_s[state.instance_id] = state.observed_at_s
        self._snapshot = snapshot
        self._infos = dict(infos)
        self._received_s = self._clock()
        self._view = None

    def now_s(self) -> float:
        """Now on the snapshot's clock (its now_s plus the wall time since it arrived)."""
        if self._snapshot is None:
            return 0.0
        return self._snapshot.now_s + (self._clock() - self._received_s)

    @property
    def endpoints(self) -> Mapping[str, InstanceInfo]:
        """Every instance of the last snapshot that has an endpoint."""
        return self._infos

    @property
    def ejected(self) -> Mapping[str, str]:
        """Instances kept out of routing, with why."""
        return dict(self._ejected)

    def eject(self, instance_id: str, reason: str) -> bool:
        """Route nothing to the instance until ``readmit``; True when it was routable."""
        if instance_id in self._ejected:
            return False
        self._ejected[instance_id] = reason
        self._view = None
        return True

    def readmit(self, instance_id: str) -> bool:
        """Route to the instance again; True when it was ejected."""
        if self._ejected.pop(instance_id, None) is None:
            return False
        self._view = None
        return True

    def placeable(self) -> bool:
        """Whether a request could be placed now (a routable instance of each phase)."""
        try:
            self.routable()
        except NoInstanceAvailableError:
            return False
        return True

    def endpoint(self, instance_id: str) -> InstanceInfo:
        info = self._infos.get(instance_id)
        if info is None:
            raise NoInstanceAvailableError(f"instance {instance_id!r} has no known endpoint")
        return info

    def routable(self) -> ClusterSnapshot:
        """Instances requests can go to, with optimistic bumps applied.

        Raises NoInstanceAvailableError without a snapshot or without a routable instance of
        either phase.
        """
        if self._snapshot is None:
            raise NoInstanceAvailableError("no cluster snapshot from telemetry yet")
        if self._expire_bumps() or self._view is None:
            self._view = self._build_view(self._snapshot)
        for phase, states in (("prefill", self._view.prefill), ("decode", self._view.decode)):
            if not states:
                raise NoInstanceAvailableError(
                    f"no {phase} instance available ({self._describe_absence(phase)})"
                )
        return self._view

    def record_placement(self, placement: Placement, request: RequestSpec) -> None:
        """Count the request on its instances until their reports include it."""
        now_s = self._clock()
        self._bumps.append(
            _Bump(
                placement.prefill_id,
                now_s,
                self._report_counts.get(placement.prefill_id, 0),
                queued_requests=1,
                queued_tokens=request.input_tokens,
            )
        )
        self._bumps.append(
            _Bump(
                placement.decode_id,
                now_s,
                self._report_counts.get(placement.decode_id, 0),
                running_requests=1,
                kv_tokens=request.input_tokens,
                output_tokens=request.max_output_tokens,
            )
        )
        self._view = None

    def _expire_bumps(self) -> bool:
        """Drop settled or expired bumps; True when any was dropped."""
        now_s = self._clock()
        kept = [
            bump
            for bump in self._bumps
            if now_s - bump.created_s < self._optimistic_ttl_s
            and self._report_counts.get(bump.instance_id, 0)
            < bump.reports_at_creation + REPORTS_TO_SETTLE
        ]
        changed = len(kept) != len(self._bumps)
        self._bumps = kept
        return changed

    def _is_routable(self, state: InstanceState, now_s: float) -> bool:
        info = self._infos.get(state.instance_id)
        if info is None or not info.engine_url or state.instance_id in self._ejected:
            return False
        return not (self._stale_after_s > 0 and now_s - state.last_activity_s > self._stale_after_s)

    def _build_view(self, snapshot: ClusterSnapshot) -> ClusterSnapshot:
        by_instance: dict[str, list[_Bump]] = {}
        for bump in self._bumps:
            by_instance.setdefault(bump.instance_id, []).append(bump)

        def select(states: Mapping[str, InstanceState]) -> dict[str, InstanceState]:
            return {
                instance_id: _apply(state, by_instance[instance_id])
                if instance_id in by_instance
                else state
                for instance_id, state in states.items()
                if self._is_routable(state, snapshot.now_s)
            }

        return ClusterSnapshot(
            now_s=snapshot.now_s, prefill=select(snapshot.prefill), decode=select(snapshot.decode)
        )

    def _describe_absence(self, phase: str) -> str:
        assert self._snapshot is not None
        states = self._snapshot.prefill if phase == "prefill" else self._snapshot.decode
        if not states:
            return "telemetry lists none"
        ejected = sorted(i for i in states if i in self._ejected)
        if ejected:
            details = "; ".join(f"{i}: {self._ejected[i]}" for i in ejected)
            return f"{len(states)} listed, {len(ejected)} failing health checks ({details})"
        return f"{len(states)} listed, none with an engine endpoint and recent activity"
