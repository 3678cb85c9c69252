"""Typed errors shared by the core, the CLI and the services."""

from __future__ import annotations

from collections.abc import Iterable


class VoltanaError(Exception):
    """Base class for every error Voltana raises on purpose.

    ``retry_elsewhere``: the server did not take the request at all (it is stopping), so a
    client may send it to another replica unchanged (told to clients in the status' trailing
    metadata, see voltana.rpc.status.RETRY_ELSEWHERE_KEY).
    """

    retry_elsewhere: bool = False


class ConfigError(VoltanaError):
    """A setting, flag or argument is invalid."""


class UnknownNameError(ConfigError):
    """A name (GPU, model, policy, router, ...) is not one of the known ones."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(self.valid)}")


# Kinds of failure that cross service boundaries. Each maps to one gRPC status code
# (voltana.rpc.status); module-specific errors can inherit from one of these as well as from
# their own base (e.g. ``class GpuNotFoundError(GpuError, NotFoundError)``) to get that code.


class InvalidArgumentError(VoltanaError):
    """A request carries invalid values (a setting's are ConfigError)."""


class NotFoundError(VoltanaError):
    """A named thing (instance, GPU, policy, request) does not exist."""


class AlreadyExistsError(VoltanaError):
    """A thing to create exists already."""


class FailedPreconditionError(VoltanaError):
    """The system's state forbids the operation now (e.g. another holder owns a clock lease)."""


class PermissionDeniedError(VoltanaError):
    """The caller or this process lacks the right to do it (e.g. setting clocks without root)."""


class UnauthenticatedError(VoltanaError):
    """The call carries no credential where one is required (a wrong one: PermissionDenied)."""


class UnavailableError(VoltanaError):
    """A dependency (engine, agent, telemetry, Redis) cannot be reached, or nothing can serve."""


class DeadlineExceededError(VoltanaError):
    """An operation did not finish in its time budget."""


class RemoteError(VoltanaError):
    """A remote call failed with a status that no more specific class above stands for."""

    def __init__(self, code_name: str, details: str) -> None:
        self.code_name = code_name
        self.details = details
        super().__init__(f"remote call failed ({code_name}): {details}")
