"""The control loop's rules, written once: what the router and the controller see of each
instance between telemetry's reports, and when a clock decision becomes a command.

Pure (state and time in, views and decisions out). The live router (services/router/cluster.py),
the live controller (services/controller/loop.py) and the discrete-event simulator
(sim/simulator.py) all drive these same objects; they differ only in where states come from and
how long each hop takes.
"""

from voltana.control.commands import needs_clock_command
from voltana.control.notices import DEFAULT_PLACEMENT_HOLD_MS, MAX_NOTIFIED_INSTANCES, NoticeBoard
from voltana.control.placements import OtherRouters, PlacementBook
from voltana.control.serving import (
    NOTHING_SERVED,
    SERVED_REFRESH_S,
    SERVED_TTL_S,
    Served,
    ServedReports,
    ServedTargets,
)

__all__ = [
    "DEFAULT_PLACEMENT_HOLD_MS",
    "MAX_NOTIFIED_INSTANCES",
    "NOTHING_SERVED",
    "SERVED_REFRESH_S",
    "SERVED_TTL_S",
    "NoticeBoard",
    "OtherRouters",
    "PlacementBook",
    "Served",
    "ServedReports",
    "ServedTargets",
    "needs_clock_command",
]
