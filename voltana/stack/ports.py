"""Which of the ports a stack is asked to take are free, checked before anything starts: a busy
port found by the last server to bind would cost every other part's start and stop first."""

from __future__ import annotations

import socket
from collections.abc import Mapping

from voltana.errors import ConfigError


def port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (the OS's reason), or None when it is free.

    Binds the way the servers do (SO_REUSEADDR, as ``socket.create_server`` sets it on POSIX),
    so a port that only has connections in TIME_WAIT counts as free.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as error:
        return error.strerror or str(error)
    return None


def require_free_ports(host: str, ports: Mapping[str, int]) -> None:
    """ConfigError naming the first of ``ports`` (name -> port; 0 = any free) that is taken."""
    for name, port in ports.items():
        if port == 0:
            continue
        reason = port_in_use(host, port)
        if reason is not None:
            raise ConfigError(
                f"the {name} port {port} on {host} is in use ({reason}): stop what listens "
                f"there (another `voltana up`?) or choose another port (0: any free one)"
            )
