"""When a clock decision becomes a command to the instance's agent."""

from __future__ import annotations


def needs_clock_command(
    decided_mhz: int,
    confirmed_mhz: int | None,
    *,
    lease_held: bool,
    now_s: float,
    retry_at_s: float = 0.0,
) -> bool:
    """A command goes out when the decision differs from the clock the agent confirmed, or
    the lease on it lapsed (the agent went back to its default clock); never before
    ``retry_at_s`` (a failed command backs off)."""
    if now_s < retry_at_s:
        return False
    return not (lease_held and confirmed_mhz == decided_mhz)
