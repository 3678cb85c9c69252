"""Errors the node agent raises on purpose; each carries its gRPC status through its base."""

from __future__ import annotations

import grpc

from voltana.errors import FailedPreconditionError, VoltanaError


class AgentError(VoltanaError):
    """Base class of node-agent errors."""


class LeaseConflictError(AgentError, FailedPreconditionError):
    """Another caller holds an unexpired clock lease on this GPU."""


class LeaseNotHeldError(AgentError, FailedPreconditionError):
    """The caller renews a lease it does not hold (none, expired, or someone else's)."""


class AgentUnauthenticatedError(AgentError):
    """A clock-changing call came without the agent's token."""


# Codes the shared table (voltana.rpc.status) has no kind for.
AGENT_STATUS_CODES: dict[type[BaseException], grpc.StatusCode] = {
    AgentUnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
}
