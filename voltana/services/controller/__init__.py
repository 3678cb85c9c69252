"""Frequency controller: runs the per-phase frequency policies on live telemetry state and
pushes the clocks they choose to node agents, under leases it keeps renewing.

The controller holds no policy logic: it builds a ``PolicySuite`` with
``voltana.policy.registry.build_suite`` and asks it, like the simulator does.
"""

from voltana.services.controller.agents import AgentClients, AppliedClock
from voltana.services.controller.errors import (
    ControllerError,
    ControllerNotRunningError,
    InvalidSloError,
)
from voltana.services.controller.feed import ClusterView, SnapshotFeed
from voltana.services.controller.loop import ControlLoop
from voltana.services.controller.policies import PolicyBook, PolicyInfo
from voltana.services.controller.records import DecisionRecord, InstanceControl
from voltana.services.controller.server import ControllerService
from voltana.services.controller.servicer import ControllerServicer
from voltana.services.controller.settings import ControllerSettings, SnapshotMode

__all__ = [
    "AgentClients",
    "AppliedClock",
    "ClusterView",
    "ControlLoop",
    "ControllerError",
    "ControllerNotRunningError",
    "ControllerService",
    "ControllerServicer",
    "ControllerSettings",
    "DecisionRecord",
    "InstanceControl",
    "InvalidSloError",
    "PolicyBook",
    "PolicyInfo",
    "SnapshotFeed",
    "SnapshotMode",
]
