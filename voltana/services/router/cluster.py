"""The router's picture of the cluster: the latest telemetry snapshot plus its own placements.

Telemetry snapshots arrive every ``snapshot_interval_ms`` at best, and engines report their load
every few tens of milliseconds, so requests placed since an instance's last report are not in
it. The placement book of the control core (voltana.control) counts each of them on its
instances until the instance's report includes it: a prefill request from the moment it was
dispatched, a decode request from its first token. Arrival rates are counted there at placement
too (and reported to telemetry, for the controller). The offline simulator drives the same book,
so policies see the same quantities live and offline.

Active-active routers: each reports its ledger to telemetry under its router id; a snapshot
carries every live router's share, and this view adds the other routers' shares to its own live
ledger and arrivals, so each placement counts once whichever router made it.

SLO classes: from the first request with targets of its own, the view also tells the policy
which instances serve which targets (``ClusterSnapshot.serving``, control/serving.py), counted
from placement to first token on the prefill instance and to the end on the decode one, and
``on_serving_change`` hears of each instance whose summary changed (for the controller).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

from voltana.contract.instances import InstanceInfo
from voltana.contract.state import (
    ClusterSnapshot,
    InstanceState,
    Phase,
    Placement,
    RequestSpec,
    SloTarget,
)
from voltana.control import PlacementBook, Served, ServedTargets
from voltana.observation import DEFAULT_OBSERVATION
from voltana.services.router.errors import NoInstanceAvailableError
from voltana.services.telemetry.records import PendingPlacement, RouterShare, add_shares


class LiveCluster:
    """Latest snapshot and endpoints, with the in-flight ledger and placement counts; single
    event loop, no locks.

    ``clock`` is a monotonic wall clock (seconds, for ages); snapshot, ledger and arrival times
    are on telemetry's clock (`now_s`).
    """

    def __init__(
        self,
        *,
        stale_after_s: float = 0.0,
        snapshot_stale_after_s: float = math.inf,
        vanished_phase_grace_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        observation_window_s: float = DEFAULT_OBSERVATION.window_s,
        router_id: str = "",
        cluster_slo: SloTarget | None = None,
        on_serving_change: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        self.router_id = router_id
        # The SLO of requests without their own (the router follows telemetry's).
        self.cluster_slo = cluster_slo
        self.on_serving_change = on_serving_change
        # Which targets each instance serves, once a request came with its own (``_classed``).
        self._served = ServedTargets()
        self._classed = False
        self._prefill_of: dict[Hashable, str] = {}
        self._stale_after_s = stale_after_s
        self._snapshot_stale_after_s = snapshot_stale_after_s
        self._vanished_grace_s = vanished_phase_grace_s
        # Since when telemetry's snapshots list no instance of a phase that they listed before.
        self._vanished_since_s: dict[Phase, float] = {}
        self._clock = clock
        self._snapshot: ClusterSnapshot | None = None
        self._infos: Mapping[str, InstanceInfo] = {}
        self._received_s = 0.0
        self._placements = PlacementBook(observation_window_s)
        # Instances kept out of routing because their engine failed (see health.EngineHealth).
        self._ejected: dict[str, str] = {}
        # The other active-active routers' shares, summed per instance (from the snapshot).
        self._others: dict[str, RouterShare] = {}

    @property
    def has_snapshot(self) -> bool:
        return self._snapshot is not None

    @property
    def latest(self) -> ClusterSnapshot | None:
        """The last snapshot as telemetry sent it (every instance, no in-flight counts)."""
        return self._snapshot

    @property
    def snapshot_age_s(self) -> float | None:
        """Wall seconds since the last snapshot arrived (None before the first)."""
        return None if self._snapshot is None else self._clock() - self._received_s

    @property
    def snapshot_stale(self) -> bool:
        """The last snapshot is older than ``snapshot_stale_after_s`` (telemetry unreachable);
        requests are placed on it all the same."""
        age_s = self.snapshot_age_s
        return age_s is not None and age_s > self._snapshot_stale_after_s

    @property
    def inflight(self) -> int:
        """Placements (per instance) not yet visible in their instance's report."""
        return len(self._placements)

    def update(
        self,
        snapshot: ClusterSnapshot,
        infos: Mapping[str, InstanceInfo],
        shares: Iterable[RouterShare] = (),
    ) -> None:
        """Take a snapshot from telemetry (with the endpoints of its instances and each
        router's share: the others' are added to this router's own ledger and arrivals).

        When it lists no instance of a phase that the last one listed, that phase's last
        instances are kept for ``vanished_phase_grace_s``: that is a store restarted empty
        (instances register again one by one within a report or two), not every instance of
        a phase gone at once; requests go on to them meanwhile (where truly gone, they fail as
        they would have).
        """
        snapshot, infos = self._keep_vanished_phases(snapshot, infos)
        for state in snapshot.states():
            self._placements.reported(state)
        self._snapshot = snapshot
        self._infos = dict(infos)
        self._received_s = self._clock()
        others: dict[str, RouterShare] = {}
        for share in shares:
            if share.router_id == self.router_id:
                continue  # this router's own part: its live ledger stands in for it
            seen = others.get(share.instance_id)
            others[share.instance_id] = share if seen is None else add_shares(seen, share)
        self._others = others

    def pending_placements(self) -> list[PendingPlacement]:
        """This router's share to report: every placement its instances may not show yet."""
        return [
            PendingPlacement(instance_id, tokens, visible_from_s)
            for instance_id, tokens, visible_from_s in self._placements.entries()
        ]

    def _keep_vanished_phases(
        self, snapshot: ClusterSnapshot, infos: Mapping[str, InstanceInfo]
    ) -> tuple[ClusterSnapshot, Mapping[str, InstanceInfo]]:
        previous = self._snapshot
        now_s = self._clock()
        by_phase = _by_phase(snapshot)
        previous_by_phase = _by_phase(previous) if previous is not None else {}
        kept_infos = dict(infos)
        for phase, states in list(by_phase.items()):
            before = previous_by_phase.get(phase, {})
            if states or not before:
                self._vanished_since_s.pop(phase, None)
                continue
            since_s = self._vanished_since_s.setdefault(phase, now_s)
            if now_s - since_s >= self._vanished_grace_s:
                continue
            by_phase[phase] = before
            kept_infos.update({i: self._infos[i] for i in before if i in self._infos})
        if (
            by_phase[Phase.PREFILL] is snapshot.prefill
            and by_phase[Phase.DECODE] is snapshot.decode
            and by_phase[Phase.UNIFIED] is snapshot.unified
        ):
            return snapshot, infos
        return (
            ClusterSnapshot(
                snapshot.now_s,
                by_phase[Phase.PREFILL],
                by_phase[Phase.DECODE],
                unified=by_phase[Phase.UNIFIED],
            ),
            kept_infos,
        )

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
        return True

    def readmit(self, instance_id: str) -> bool:
        """Route to the instance again; True when it was ejected."""
        return self._ejected.pop(instance_id, None) is not None

    def placeable(self) -> bool:
        """Whether a request could be placed now (a routable instance of each phase, or a
        routable colocated one)."""
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
        """Instances requests can go to, each with its in-flight requests and the arrival
        rates counted here.

        Raises NoInstanceAvailableError without a snapshot, or without a routable colocated
        instance and a routable instance of either phase.
        """
        if self._snapshot is None:
            raise NoInstanceAvailableError("no cluster snapshot from telemetry yet")
        view = self._build_view(self._snapshot, self.now_s())
        if view.unified:
            return view
        missing = [
            phase
            for phase, states in (("prefill", view.prefill), ("decode", view.decode))
            if not states
        ]
        if missing:
            snapshot = self._snapshot
            if snapshot.unified and not snapshot.prefill and not snapshot.decode:
                # A colocated-only cluster: PD instances are not missing, colocated ones are.
                absence = self._describe_absence("unified")
                raise NoInstanceAvailableError(f"no colocated instance available ({absence})")
            phase = missing[0]
            message = f"no {phase} instance available ({self._describe_absence(phase)})"
            if snapshot.unified:
                message += f"; no colocated one ({self._describe_absence('unified')})"
            raise NoInstanceAvailableError(message)
        return view

    def view_of(self, instance_id: str) -> InstanceState | None:
        """One instance as `routable` shows it (None when the snapshot lacks it)."""
        if self._snapshot is None:
            return None
        state = self._snapshot.instance(instance_id)
        return None if state is None else self._annotate(state, self.now_s())

    def record_placement(
        self,
        request_id: Hashable,
        placement: Placement,
        request: RequestSpec,
        own_slo: SloTarget | None = None,
    ) -> None:
        """Count the request on its instances until their reports include it. ``own_slo``: the
        request's own targets (an SLO class), None when it is held to the cluster SLO."""
        self._placements.place(
            request_id,
            placement.prefill_id,
            placement.decode_id,
            request.input_tokens,
            self.now_s(),
        )
        self._classed = self._classed or own_slo is not None
        if self._classed:
            ids = (placement.prefill_id, placement.decode_id)
            before = [self._served.summary(i) for i in ids]
            self._served.open(request_id, ids, own_slo)
            self._prefill_of[request_id] = placement.prefill_id
            self._serving_changed(ids, before)

    def reached(self, request_id: Hashable, instance_id: str) -> None:
        """The instance holds the request now (prefill: dispatched; decode: first token): its
        reports from here on include it."""
        self._placements.reached(request_id, instance_id, self.now_s())
        prefill_id = self._prefill_of.get(request_id)
        if prefill_id is not None and instance_id != prefill_id:
            # The first token: the prompt is done, its prefill instance serves it no longer.
            del self._prefill_of[request_id]
            before = self._served.summary(prefill_id)
            self._served.leave(request_id, prefill_id)
            self._serving_changed((prefill_id,), (before,))

    def finished(self, request_id: Hashable) -> None:
        """The request ended (completed or failed): nothing of it is in flight any more."""
        self._placements.finished(request_id)
        if self._classed:
            ids = self._served.instances_of(request_id)
            before = [self._served.summary(i) for i in ids]
            self._served.close(request_id)
            self._prefill_of.pop(request_id, None)
            self._serving_changed(ids, before)

    def served_of(self, instance_id: str) -> Served | None:
        """What this router's requests on the instance are held to; None before the first
        request with its own targets (nothing to say apart from the cluster SLO)."""
        return self._served.summary(instance_id) if self._classed else None

    def serving_now(self) -> list[str]:
        """Every instance serving one of this router's requests (once classed)."""
        return self._served.instances()

    def _serving_changed(self, instance_ids: Sequence[str], before: Sequence[Served]) -> None:
        if self.on_serving_change is None:
            return
        changed = [
            i for i, b in zip(instance_ids, before, strict=True) if self._served.summary(i) != b
        ]
        if changed:
            self.on_serving_change(changed)

    def _is_routable(self, state: InstanceState, now_s: float) -> bool:
        info = self._infos.get(state.instance_id)
        if info is None or not info.engine_url or state.instance_id in self._ejected:
            return False
        # A silent instance (no report for a while), not an idle one: idle ones report too.
        return not (self._stale_after_s > 0 and now_s - state.observed_at_s > self._stale_after_s)

    def _annotate(self, state: InstanceState, now_s: float) -> InstanceState:
        # The snapshot's counts sum every router's reported share; this router's live book
        # replaces its own (fresher), the others' parts are added once each.
        return self._placements.annotate(state, now_s, self._others.get(state.instance_id))

    def _build_view(self, snapshot: ClusterSnapshot, now_s: float) -> ClusterSnapshot:
        def select(states: Mapping[str, InstanceState]) -> dict[str, InstanceState]:
            return {
                instance_id: self._annotate(state, now_s)
                for instance_id, state in states.items()
                if self._is_routable(state, snapshot.now_s)
            }

        serving = {}
        if self._classed and self.cluster_slo is not None:
            serving = self._served.serving(self.cluster_slo)
        return ClusterSnapshot(
            now_s=now_s,
            prefill=select(snapshot.prefill),
            decode=select(snapshot.decode),
            serving=serving,
            unified=select(snapshot.unified),
        )

    def _describe_absence(self, phase: str) -> str:
        assert self._snapshot is not None
        states = _by_phase(self._snapshot)[Phase(phase)]
        if not states:
            return "telemetry lists none"
        ejected = sorted(i for i in states if i in self._ejected)
        if ejected:
            details = "; ".join(f"{i}: {self._ejected[i]}" for i in ejected)
            return f"{len(states)} listed, {len(ejected)} failing health checks ({details})"
        return f"{len(states)} listed, none with an engine endpoint and recent activity"


def _by_phase(snapshot: ClusterSnapshot) -> dict[Phase, Mapping[str, InstanceState]]:
    return {
        Phase.PREFILL: snapshot.prefill,
        Phase.DECODE: snapshot.decode,
        Phase.UNIFIED: snapshot.unified,
    }
