"""Which SLO targets each instance is serving: what its clock law must meet right now.

Requests of several classes share a cluster (interactive chat at the cluster SLO, batch jobs
with looser targets). An instance's clock law runs against the tightest targets among the
requests it holds or has been sent, so an instance serving only loose requests may slow down
and one tight request raises it at once. A request counts on its prefill instance from its
placement to its first token and on its decode instance from its placement to its end.

Pure bookkeeping, keyed by the caller's request ids; the router, the controller and the
simulator drive it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from voltana.policy.state import SloTarget, tightest_slo


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
