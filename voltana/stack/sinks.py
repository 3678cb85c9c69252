"""Engine load reports → telemetry, on telemetry's (wall Unix) time base.

A simulated engine stamps its ``InstanceState`` with its own clock (monotonic, sped up by the
stack's speedup), while telemetry, agents and the controller use Unix time. The sink moves the
two timestamps onto Unix time, so "no report for 5 s" rules and telemetry windows compare like
with like. Latencies inside the state stay in simulated milliseconds.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from voltana.contract.state import InstanceState
from voltana.services.telemetry.client import TelemetryClient
from voltana.stack.registration import InstanceRegistration

_LOG = logging.getLogger(__name__)


class TelemetryInstanceSink:
    """``voltana.engine.InstanceSampleSink`` sending each state as one short report stream.

    ``engine_clock`` is the clock that stamped the states and ``speedup`` its rate against the
    wall clock; ``wall_clock`` is telemetry's time base (Unix seconds). With ``registration``,
    a report telemetry rejects because it does not know the instance registers it again.
    """

    def __init__(
        self,
        client: TelemetryClient,
        *,
        engine_clock: Callable[[], float],
        speedup: float = 1.0,
        wall_clock: Callable[[], float] = time.time,
        registration: InstanceRegistration | None = None,
    ) -> None:
        self._client = client
        self.registration = registration
        self._engine_clock = engine_clock
        self._speedup = speedup
        self._wall_clock = wall_clock
        self.rejected = 0

    def to_wall_s(self, engine_s: float) -> float:
        """The Unix time of an engine-clock reading (0 stays 0: "unknown")."""
        if engine_s <= 0:
            return 0.0
        return self._wall_clock() - (self._engine_clock() - engine_s) / self._speedup

    def restamp(self, state: InstanceState) -> InstanceState:
        return dataclasses.replace(
            state,
            observed_at_s=self.to_wall_s(state.observed_at_s),
            last_activity_s=self.to_wall_s(state.last_activity_s),
        )

    async def send(self, state: InstanceState) -> None:
        result = await self._client.report_instance_samples([self.restamp(state)])
        if self.registration is not None:
            self.registration.note_report(result.unknown_instance_ids)
        if result.rejected or result.dropped_fields:
            # Expected until the instance is registered (its first report may race that).
            self.rejected += result.rejected
            _LOG.debug(
                "telemetry rejected a report of %s: %s",
                state.instance_id,
                result.first_rejection_reason,
            )
