"""Which SLO targets each instance is serving: what its clock law must meet right now.

Requests of several classes share a cluster (interactive chat at the cluster SLO, batch jobs
with looser targets). An instance's clock law runs against the tightest targets among the
requests it holds or has been sent, so an instance serving only loose requests may slow down
and one tight request raises it at once. A request counts on its prefill instance from its
placement to its first token and on its decode instance from its placement to its end.

Pure bookkeeping, keyed by the caller's request ids. The simulator and the live router keep a
``ServedTargets``; the live router sends each instance's summary (``Served``) with its placement
notices, and the live controller keeps every router's latest summaries in ``ServedReports``,
which give the same law targets the simulator takes from its ``ServedTargets``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from voltana.contract.state import SloTarget, tightest_slo

# A router's summary for an instance stands this long unless repeated (a router that died
# cannot hold an instance to its requests' targets for ever); live routers repeat theirs every
# SERVED_REFRESH_S while the instance serves anything.
SERVED_TTL_S = 10.0
SERVED_REFRESH_S = 3.0


@dataclass(frozen=True, slots=True)
class Served:
    """What the requests on one instance are held to: some to the cluster SLO
    (``cluster_slo``), the others to their own targets, ``own_slo`` the tightest of those."""

    cluster_slo: bool = False
    own_slo: SloTarget | None = None

    @property
    def empty(self) -> bool:
        return not self.cluster_slo and self.own_slo is None

    def target(self, cluster_slo: SloTarget) -> SloTarget | None:
        """The tightest targets served, with the cluster SLO at ``cluster_slo`` (None: none)."""
        targets = [cluster_slo] if self.cluster_slo else []
        if self.own_slo is not None:
            targets.append(self.own_slo)
        return tightest_slo(*targets) if targets else None


NOTHING_SERVED = Served()


class ServedTargets:
    """Per instance, how many requests of each target set it serves (``None``: the cluster
    SLO, whatever it is when asked)."""

    def __init__(self) -> None:
        self._counts: dict[str, dict[SloTarget | None, int]] = {}
        self._requests: dict[Hashable, tuple[SloTarget | None, list[str]]] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def open(self, key: Hashable, instance_ids: Iterable[str], slo: SloTarget | None) -> None:
        """Request ``key`` (own targets ``slo``, or None for the cluster SLO) is placed on
        ``instance_ids``; opening a key again replaces its earlier placement."""
        self.close(key)
        ids = list(dict.fromkeys(instance_ids))
        self._requests[key] = (slo, ids)
        for instance_id in ids:
            counts = self._counts.setdefault(instance_id, {})
            counts[slo] = counts.get(slo, 0) + 1

    def leave(self, key: Hashable, instance_id: str) -> None:
        """The request no longer needs ``instance_id`` (its prefill is done)."""
        entry = self._requests.get(key)
        if entry is None or instance_id not in entry[1]:
            return
        entry[1].remove(instance_id)
        self._drop(instance_id, entry[0])
        if not entry[1]:
            del self._requests[key]

    def close(self, key: Hashable) -> None:
        """The request ended (completed, failed or cancelled)."""
        entry = self._requests.pop(key, None)
        if entry is None:
            return
        for instance_id in entry[1]:
            self._drop(instance_id, entry[0])

    def _drop(self, instance_id: str, slo: SloTarget | None) -> None:
        counts = self._counts[instance_id]
        left = counts[slo] - 1
        if left:
            counts[slo] = left
            return
        del counts[slo]
        if not counts:
            del self._counts[instance_id]

    def tightest(self, instance_id: str, cluster_slo: SloTarget) -> SloTarget | None:
        """The tightest targets ``instance_id`` serves (None: it serves no request)."""
        counts = self._counts.get(instance_id)
        if not counts:
            return None
        targets = [cluster_slo if slo is None else slo for slo in counts]
        return tightest_slo(*targets)

    def serving(self, cluster_slo: SloTarget) -> dict[str, SloTarget]:
        """Every instance serving a request, with its tightest targets."""
        return {
            instance_id: tightest_slo(*(cluster_slo if slo is None else slo for slo in counts))
            for instance_id, counts in self._counts.items()
        }

    def law_target(self, instance_id: str, cluster_slo: SloTarget) -> SloTarget:
        """What the instance's clock law runs against: its tightest served targets, the
        cluster SLO when it serves nothing (it parks; the next request may be tight)."""
        return self.tightest(instance_id, cluster_slo) or cluster_slo

    def summary(self, instance_id: str) -> Served:
        """What the instance serves, with the cluster SLO left symbolic (for the controller)."""
        counts = self._counts.get(instance_id)
        if not counts:
            return NOTHING_SERVED
        own = [slo for slo in counts if slo is not None]
        return Served(None in counts, tightest_slo(*own) if own else None)

    def instances_of(self, key: Hashable) -> list[str]:
        """The instances request ``key`` is counted on (none once closed)."""
        entry = self._requests.get(key)
        return [] if entry is None else list(entry[1])

    def instances(self) -> list[str]:
        """Every instance serving a request."""
        return list(self._counts)


class ServedReports:
    """The controller's side: each router's latest ``Served`` per instance, for ``ttl_s``.

    ``law_target`` is what ``ServedTargets.law_target`` gives on one router's books, over every
    router's: the tightest targets any of them serves on the instance, the cluster SLO when
    none serves anything there (or none said so within ``ttl_s``).
    """

    def __init__(self, ttl_s: float = SERVED_TTL_S) -> None:
        self._ttl_s = ttl_s
        # instance id -> router id -> (what it serves there, when it said so)
        self._reports: dict[str, dict[str, tuple[Served, float]]] = {}

    def report(self, router_id: str, instance_id: str, served: Served, now_s: float) -> bool:
        """Take a router's summary for an instance; True when the instance's law target may
        have changed (its clock should be decided again)."""
        by_router = self._reports.setdefault(instance_id, {})
        previous = by_router.get(router_id)
        if served.empty:
            by_router.pop(router_id, None)
            if not by_router:
                del self._reports[instance_id]
        else:
            by_router[router_id] = (served, now_s)
        return (NOTHING_SERVED if previous is None else previous[0]) != served

    def law_target(self, instance_id: str, cluster_slo: SloTarget, now_s: float) -> SloTarget:
        by_router = self._reports.get(instance_id)
        if not by_router:
            return cluster_slo
        targets = []
        for router_id, (served, said_at_s) in list(by_router.items()):
            if now_s - said_at_s > self._ttl_s:
                del by_router[router_id]
                continue
            target = served.target(cluster_slo)
            if target is not None:
                targets.append(target)
        if not by_router:
            del self._reports[instance_id]
        return tightest_slo(*targets) if targets else cluster_slo

    def forget(self, instance_id: str) -> None:
        """The instance left."""
        self._reports.pop(instance_id, None)
