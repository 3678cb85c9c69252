"""Clock leases per GPU: who may hold a locked clock, and until when. Pure (time passed in).

A lease belongs to a holder id (what the caller names itself, e.g. "controller@host") *and*
the principal that authenticated the call (voltana.rpc.auth.current_principal: a TLS client
certificate's name, "token", or "anonymous"): only that same pair may renew or reset it while
it is live.
"""

from __future__ import annotations

from dataclasses import dataclass

from voltana.services.agent.errors import LeaseConflictError, LeaseNotHeldError


@dataclass(frozen=True, slots=True)
class Lease:
    holder: str
    expires_at_s: float
    principal: str = ""

    def is_live(self, now_s: float) -> bool:
        return now_s < self.expires_at_s

    def held_by(self, holder: str, principal: str) -> bool:
        return self.holder == holder and self.principal == principal

    def describe(self) -> str:
        return f"{self.holder!r} ({self.principal})" if self.principal else repr(self.holder)


class LeaseTable:
    """At most one lease per GPU. Expired leases stay until ``release`` (the watchdog's job)."""

    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}

    def get(self, gpu_index: int) -> Lease | None:
        return self._leases.get(gpu_index)

    def grant(
        self, gpu_index: int, holder: str, ttl_s: float, now_s: float, principal: str = ""
    ) -> Lease:
        """Give ``holder`` the lease for ``ttl_s``; refuses while another holder's is live."""
        self.check_grantable(gpu_index, holder, now_s, principal)
        lease = Lease(holder, now_s + ttl_s, principal)
        self._leases[gpu_index] = lease
        return lease

    def _foreign(self, gpu_index: int, holder: str, now_s: float, principal: str) -> Lease | None:
        """The GPU's live lease when someone other than (holder, principal) holds it."""
        current = self._leases.get(gpu_index)
        if current is None or current.held_by(holder, principal) or not current.is_live(now_s):
            return None
        return current

    def check_grantable(
        self, gpu_index: int, holder: str, now_s: float, principal: str = ""
    ) -> None:
        """Raise LeaseConflictError when ``grant`` would refuse."""
        current = self._foreign(gpu_index, holder, now_s, principal)
        if current is not None:
            raise LeaseConflictError(
                f"GPU {gpu_index} is leased to {current.describe()} for another "
                f"{current.expires_at_s - now_s:.1f} s"
            )

    def check_releasable(
        self, gpu_index: int, holder: str, now_s: float, principal: str = ""
    ) -> None:
        """Raise LeaseNotHeldError when someone else holds a live lease on the GPU (resetting
        it would take their clock away); no lease, an expired one or one's own is fine."""
        current = self._foreign(gpu_index, holder, now_s, principal)
        if current is not None:
            raise LeaseNotHeldError(
                f"GPU {gpu_index} is leased to {current.describe()} for another "
                f"{current.expires_at_s - now_s:.1f} s; only its holder may reset it (or wait "
                "for it to lapse)"
            )

    def renew(
        self, gpu_index: int, holder: str, ttl_s: float, now_s: float, principal: str = ""
    ) -> Lease:
        """Extend ``holder``'s live lease to ``now_s + ttl_s``."""
        current = self._leases.get(gpu_index)
        if current is None or not current.is_live(now_s):
            raise LeaseNotHeldError(
                f"GPU {gpu_index} has no live lease to renew; call SetClocks to take one"
            )
        if not current.held_by(holder, principal):
            mine = Lease(holder, 0.0, principal).describe()
            raise LeaseNotHeldError(
                f"GPU {gpu_index} is leased to {current.describe()}, not to {mine}"
            )
        lease = Lease(holder, now_s + ttl_s, principal)
        self._leases[gpu_index] = lease
        return lease

    def held_by(self, holder: str, now_s: float, principal: str = "") -> list[int]:
        return sorted(
            index
            for index, lease in self._leases.items()
            if lease.held_by(holder, principal) and lease.is_live(now_s)
        )

    def release(self, gpu_index: int) -> Lease | None:
        return self._leases.pop(gpu_index, None)

    def expired(self, now_s: float) -> list[int]:
        return sorted(index for index, lease in self._leases.items() if not lease.is_live(now_s))

    def next_expiry_s(self) -> float | None:
        return min((lease.expires_at_s for lease in self._leases.values()), default=None)
