"""Active-active routers' shares of the in-flight counts and arrival rates.

Each router reports, with its placement batches, every request it placed that the instances'
reports may not show yet (its in-flight ledger), under its router id; each report replaces
that router's previous one, so nothing is counted twice, and a share not renewed within
``ttl_s`` is dropped (the router died; its requests died with it). Arrivals are counted per
router too. A snapshot lists every live router's part per instance; each router sums the
others' parts with its own live ledger. (The instance states keep what the engines reported:
the controller observes as it does offline.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from voltana.observation import InflightLedger
from voltana.services.telemetry.arrivals import ArrivalRates
from voltana.services.telemetry.records import PendingPlacement, RouterShare
from voltana.services.telemetry.store import ChangeNotifier


class RouterShares:
    def __init__(self, *, ttl_s: float, arrival_window_s: float, clock: Callable[[], float]):
        self._ttl_s = ttl_s
        self._clock = clock
        self._arrival_window_s = arrival_window_s
        # router id -> (its pending placements as a ledger, when it last reported).
        self._ledgers: dict[str, tuple[InflightLedger, float]] = {}
        self._reported: dict[str, list[PendingPlacement]] = {}
        # Moves when a router's share changes (watchers send a snapshot then).
        self.changes = ChangeNotifier()
        self._arrivals: dict[str, ArrivalRates] = {}
        self._last_arrival_s: dict[str, float] = {}

    def report(self, router_id: str, pending: Iterable[PendingPlacement]) -> None:
        """``router_id``'s whole in-flight share now (replaces what it reported before)."""
        pending = list(pending)
        ledger = InflightLedger()
        for index, placement in enumerate(pending):
            ledger.add(index, placement.instance_id, placement.tokens, placement.visible_from_s)
        self._ledgers[router_id] = (ledger, self._clock())
        if self._reported.get(router_id, []) != pending:
            self._reported[router_id] = pending
            self.changes.changed()

    def arrival(self, router_id: str, instance_id: str, placed_at_s: float, tokens: int) -> None:
        rates = self._arrivals.get(router_id)
        if rates is None:
            rates = self._arrivals[router_id] = ArrivalRates(self._arrival_window_s)
        rates.record(instance_id, placed_at_s, tokens)
        self._last_arrival_s[router_id] = self._clock()

    def _live(self) -> dict[str, InflightLedger]:
        horizon_s = self._clock() - self._ttl_s
        for router_id in [r for r, (_, at_s) in self._ledgers.items() if at_s < horizon_s]:
            del self._ledgers[router_id]
            self._reported.pop(router_id, None)
        horizon_s -= self._arrival_window_s  # a silent router's arrivals left every window
        for router_id in [r for r, at_s in self._last_arrival_s.items() if at_s < horizon_s]:
            del self._last_arrival_s[router_id], self._arrivals[router_id]
        return {router_id: ledger for router_id, (ledger, _) in self._ledgers.items()}

    def shares(self, instance_id: str, observed_at_s: float, now_s: float) -> Sequence[RouterShare]:
        """Each live router's part of the instance whose report was observed at
        ``observed_at_s`` (routers with nothing there left out)."""
        ledgers = self._live()
        shares = []
        for router_id in sorted({*ledgers, *self._arrivals}):
            ledger = ledgers.get(router_id)
            requests, tokens = ledger.pending(instance_id, observed_at_s) if ledger else (0, 0)
            rates = self._arrivals.get(router_id)
            rate_rps, tokens_per_s = rates.rates(instance_id, now_s) if rates else (0.0, 0.0)
            if requests or rate_rps:
                shares.append(
                    RouterShare(router_id, instance_id, requests, tokens, rate_rps, tokens_per_s)
                )
        return shares

    def forget(self, instance_id: str) -> None:
        for rates in self._arrivals.values():
            rates.forget(instance_id)
