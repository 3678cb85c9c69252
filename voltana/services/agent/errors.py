"""Errors the node agent raises on purpose; each carries its gRPC status through its base."""

from __future__ import annotations

from voltana.errors import FailedPreconditionError, VoltanaError


class AgentError(VoltanaError):
    """Base class of node-agent errors."""


class LeaseConflictError(AgentError, FailedPreconditionError):
    """Another caller holds an unexpired clock lease on this GPU."""


class LeaseNotHeldError(AgentError, FailedPreconditionError):
    """The caller renews or resets a lease it does not hold (none, expired, or someone
    else's)."""
