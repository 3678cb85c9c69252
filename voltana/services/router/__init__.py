"""Router service: places each request on a prefill+decode pair with the cluster's routing
policy (the same object the simulator uses) and relays the decode's tokens to the client."""

from voltana.services.router.cluster import LiveCluster
from voltana.services.router.errors import (
    EngineDeadlineError,
    EngineFailedError,
    EngineRejectedError,
    EngineUnreachableError,
    InvalidGenerateRequestError,
    NoInstanceAvailableError,
    RouterError,
)
from voltana.services.router.service import RouterService, build_routing_policy
from voltana.services.router.settings import RouterSettings

__all__ = [
    "EngineDeadlineError",
    "EngineFailedError",
    "EngineRejectedError",
    "EngineUnreachableError",
    "InvalidGenerateRequestError",
    "LiveCluster",
    "NoInstanceAvailableError",
    "RouterError",
    "RouterService",
    "RouterSettings",
    "build_routing_policy",
]
