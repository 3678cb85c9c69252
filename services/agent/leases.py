"""Clock leases per GPU: who may hold a locked clock, and until when. Pure (time passed in)."""

from __future__ import annotations

from dataclasses import dataclass

from voltana.services.agent.errors import LeaseConflictError, LeaseNotHeldError


@dataclass(frozen=True, slots=True)
class Lease:
    holder: str
    expires_at_s: float

    def is_live(self, now_s: float) -> bool:
        return now_s < self.expires_at_s


class LeaseTable:
    """At most one lease per GPU. Expired leases stay until ``release`` (the watchdog's job)."""

    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}

    def get(self, gpu_index: int) -> Lease | None:
        return self._leases.get(gpu_index)

    def grant(self, gpu_index: int, holder: str, ttl_s: float, now_s: float) -> Lease:
        """Give ``holder`` the lease for ``ttl_s``; refuses while another holder's is live."""
        self.check_grantable(gpu_index, holder, now_s)
        lease = Lease(holder, now_s + ttl_s)
        self._leases[gpu_index] = lease
        return lease

    def check_grantable(self, gpu_index: int, holder: str, now_s: float) -> None:
        """Raise LeaseConflictError when ``grant`` would refuse."""
        current = self._leases.get(gpu_index)
        if current is not None and current.holder != holder and current.is_live(now_s):
            raise LeaseConflictError(
                f"GPU {gpu_index} is leased to {current.holder!r} for another "
                f"{current.expires_at_s - now_s:.1f} s"
            )

    def renew(self, gpu_index: int, holder: str, ttl_s: float, now_s: float) -> Lease:
        """Extend ``holder``'s live lease to ``now_s + ttl_s``."""
        current = self._leases.get(gpu_index)
        if current is None or not current.is_live(now_s):
            raise LeaseNotHeldError(
                f"GPU {gpu_index} has no live lease to renew; call SetClocks to take one"
            )
        if current.holder != holder:
            raise LeaseNotHeldError(
                f"GPU {gpu_index} is leased to {current.holder!r}, not to {holder!r}"
            )
        lease = Lease(holder, now_s + ttl_s)
        self._leases[gpu_index] = lease
        return lease

    def held_by(self, holder: str, now_s: float) -> list[int]:
        return sorted(
            index
            for index, lease in self._leases.items()
            if lease.holder == holder and lease.is_live(now_s)
        )

    def release(self, gpu_index: int) -> Lease | None:
        return self._leases.pop(gpu_index, None)

    def expired(self, now_s: float) -> list[int]:
        return sorted(index for index, lease in self._leases.items() if not lease.is_live(now_s))

    def next_expiry_s(self) -> float | None:
        return min((lease.expires_at_s for lease in self._leases.values()), default=None)
