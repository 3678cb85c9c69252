"""The controller's side: the router's view sent with a placement stands for the instance until
telemetry shows the request there.

The router dispatches a request only once the controller answered its placement notice (and a
new clock is applied). A report taken after the notice but before the request reached the
engine shows an idle instance: taken at its word it would park the clock the notice just
raised, under the placed prompt. So a notice stands until a report taken after it shows work,
or until ``hold_s`` has passed (the request failed or went elsewhere).
"""

from __future__ import annotations

from voltana.contract.state import InstanceState

# The live controller's default (ControllerSettings.placement_hold_ms) and the simulator's.
DEFAULT_PLACEMENT_HOLD_MS = 250

# The most instances one notice may describe: under load a router's notice covers every
# instance placed on since its last one (a cluster's worth); longer lists go in several.
MAX_NOTIFIED_INSTANCES = 256


class NoticeBoard:
    def __init__(self, hold_s: float = DEFAULT_PLACEMENT_HOLD_MS / 1000.0) -> None:
        self._hold_s = hold_s
        self._notices: dict[str, InstanceState] = {}

    def notice(self, state: InstanceState) -> None:
        """The router placed a request on the instance and described it so (``observed_at_s``
        is when the notice was taken)."""
        self._notices[state.instance_id] = state

    def newest(self, reported: InstanceState | None, instance_id: str) -> InstanceState | None:
        """What the instance's clock is decided on: its latest report, or the notice that
        still stands for it."""
        notice = self._notices.get(instance_id)
        if notice is None:
            return reported
        if reported is None or reported.observed_at_s < notice.observed_at_s:
            return notice
        if not reported.is_idle or reported.observed_at_s >= notice.observed_at_s + self._hold_s:
            del self._notices[instance_id]
            return reported
        return notice

    def forget(self, instance_id: str) -> None:
        """The instance left."""
        self._notices.pop(instance_id, None)
