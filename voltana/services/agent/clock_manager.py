"""Clock control of the node's GPUs under leases, with a watchdog that resets expired ones.

The gRPC servicer is a thin translation layer over this class. Every clock change happens
under a lease: a controller that crashes or loses the network stops renewing, and the watchdog
puts the GPU back to its default clocks (the safe state for latency) when the lease lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context

from voltana.errors import InvalidArgumentError
from voltana.gpu import GpuDevice, GpuError, GpuNotFoundError, resolve_sm_clock_mhz
from voltana.lifecycle import finish_before_cancelling
from voltana.services.agent.clock import AgentClock
from voltana.services.agent.leases import Lease, LeaseTable
from voltana.text import shorten

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")
# (GPU index, lease expiry on the agent's clock, or None when the lease ended).
LeaseListener = Callable[[int, float | None], None]


@dataclass(frozen=True, slots=True)
class ClockChange:
    """What one SetClocks did."""

    gpu_index: int
    requested_sm_clock_mhz: float
    # After rounding up to a supported clock.
    applied_sm_clock_mhz: int
    # Read back from the device once it settled, or when the read-back timeout ran out.
    measured_sm_clock_mhz: int
    lease: Lease

    @property
    def clamped(self) -> bool:
        return self.applied_sm_clock_mhz != self.requested_sm_clock_mhz

    @property
    def readback_matches(self) -> bool:
        return self.measured_sm_clock_mhz == self.applied_sm_clock_mhz


@dataclass(frozen=True, slots=True)
class GpuClockStatus:
    gpu_index: int
    current_sm_clock_mhz: int
    # None at default clocks.
    locked_sm_clock_mhz: int | None
    lease: Lease | None


class ClockManager:
    """Applies, reads back and resets SM clocks of a fixed set of GPUs.

    Calls on one GPU are serialised; device calls run in a worker thread because NVML clock
    changes can block for tens of milliseconds.
    """

    def __init__(
        self,
        devices: Sequence[GpuDevice],
        clock: AgentClock,
        *,
        default_lease_ttl_s: float,
        max_lease_ttl_s: float,
        readback_timeout_s: float = 0.2,
        readback_poll_s: float = 0.01,
        tracer: trace.Tracer | None = None,
        lease_listener: LeaseListener | None = None,
    ) -> None:
        """``lease_listener`` hears of every lease change: (GPU, expiry on ``clock``) when one
        is granted or renewed, (GPU, None) when it ends (the fail-safe watchdog listens)."""
        self._devices: dict[int, GpuDevice] = {}
        for device in devices:
            if device.index in self._devices:
                raise InvalidArgumentError(f"two devices claim GPU index {device.index}")
            self._devices[device.index] = device
        self._clock = clock
        self._default_lease_ttl_s = default_lease_ttl_s
        self._max_lease_ttl_s = max_lease_ttl_s
        self._readback_timeout_s = readback_timeout_s
        self._readback_poll_s = readback_poll_s
        self._leases = LeaseTable()
        self._locked_mhz: dict[int, int] = {}
        self._gpu_locks = {index: asyncio.Lock() for index in self._devices}
        # Set whenever a lease changes, so the watchdog recomputes its next deadline.
        self._leases_changed = asyncio.Event()
        self._lease_listener = lease_listener
        # The global (no-op unless configured) tracer unless a test hands in its own.
        self._tracer = tracer or trace.get_tracer(__name__)

    def _lease_changed(self, gpu_index: int, lease: Lease | None) -> None:
        self._leases_changed.set()
        if self._lease_listener is not None:
            self._lease_listener(gpu_index, lease.expires_at_s if lease is not None else None)

    @property
    def devices(self) -> Mapping[int, GpuDevice]:
        return dict(sorted(self._devices.items()))

    def device(self, gpu_index: int) -> GpuDevice:
        try:
            return self._devices[gpu_index]
        except KeyError:
            raise GpuNotFoundError(
                f"this agent controls no GPU {gpu_index}; it controls {sorted(self._devices)}"
            ) from None

    def lease_ttl_s(self, requested_ttl_s: float | None) -> float:
        """The lease length to grant: default when unset or 0, capped at the maximum."""
        if requested_ttl_s is None or requested_ttl_s == 0:
            return self._default_lease_ttl_s
        if math.isnan(requested_ttl_s) or requested_ttl_s < 0:
            raise InvalidArgumentError(f"lease TTL must be >= 0, got {requested_ttl_s} s")
        return min(requested_ttl_s, self._max_lease_ttl_s)

    @staticmethod
    async def _device_call(function: Callable[..., _T], *args: object) -> _T:
        return await asyncio.to_thread(function, *args)

    async def set_clock(
        self,
        gpu_index: int,
        requested_sm_clock_mhz: float,
        holder: str,
        ttl_s: float | None = None,
        reason: str = "",
        trace_context: Context | None = None,
        principal: str = "",
    ) -> ClockChange:
        """Lock the GPU at the nearest supported clock >= the request and lease it to holder
        (as authenticated by ``principal``; see leases.py).

        ``trace_context`` is the caller's (e.g. extracted from gRPC metadata): the span joins
        the caller's trace instead of starting a new one. None: the current context.
        """
        device = self.device(gpu_index)
        lease_ttl_s = self.lease_ttl_s(ttl_s)
        with self._tracer.start_as_current_span(
            "voltana.agent.set_clocks", context=trace_context
        ) as span:
            span.set_attributes(
                {
                    "voltana.gpu.index": gpu_index,
                    "voltana.gpu.sm_clock.requested_mhz": float(requested_sm_clock_mhz),
                    "voltana.lease.holder": holder,
                    "voltana.lease.principal": principal,
                    "voltana.lease.ttl_s": lease_ttl_s,
                    "voltana.reason": reason,
                }
            )
            applied_mhz = resolve_sm_clock_mhz(
                device.supported_sm_clocks_mhz(), requested_sm_clock_mhz
            )
            span.set_attribute("voltana.gpu.sm_clock.applied_mhz", applied_mhz)
            async with self._gpu_locks[gpu_index]:
                self._leases.check_grantable(gpu_index, holder, self._clock.now_s(), principal)
                # Finished even when the caller gives up (deadline, Ctrl-C): the device call
                # runs on in its thread, and a clock locked without its lease would never be
                # put back by the watchdog.
                lease = await finish_before_cancelling(
                    self._lock_and_lease(device, applied_mhz, holder, lease_ttl_s, principal)
                )
                measured_mhz = await self._read_back(device, applied_mhz)
            change = ClockChange(
                gpu_index, requested_sm_clock_mhz, applied_mhz, measured_mhz, lease
            )
            span.set_attributes(
                {
                    "voltana.gpu.sm_clock.measured_mhz": measured_mhz,
                    "voltana.gpu.sm_clock.clamped": change.clamped,
                    "voltana.gpu.sm_clock.readback_matches": change.readback_matches,
                }
            )
        if not change.readback_matches:
            _LOG.warning(
                "GPU %d reads %d MHz %.0f ms after locking %d MHz",
                gpu_index,
                measured_mhz,
                self._readback_timeout_s * 1000,
                applied_mhz,
            )
        _LOG.info(
            "GPU %d locked at %d MHz (asked %s) for %s, lease %.1f s: %s",
            gpu_index,
            applied_mhz,
            requested_sm_clock_mhz,
            lease.describe(),
            lease_ttl_s,
            shorten(reason, 200),
        )
        return change

    async def _lock_and_lease(
        self, device: GpuDevice, applied_mhz: int, holder: str, ttl_s: float, principal: str
    ) -> Lease:
        # Caller holds the GPU's lock.
        await self._device_call(device.set_locked_sm_clock_mhz, applied_mhz, applied_mhz)
        # The lease starts once the clock is locked, so no locked clock is unleased.
        lease = self._leases.grant(device.index, holder, ttl_s, self._clock.now_s(), principal)
        self._locked_mhz[device.index] = applied_mhz
        self._lease_changed(device.index, lease)
        return lease

    async def _read_back(self, device: GpuDevice, expected_mhz: int) -> int:
        """Poll the clock until it shows ``expected_mhz`` or the read-back timeout passes.

        A failed read does not undo the change (the clock is locked and leased); it reports 0.
        """
        deadline_s = self._clock.now_s() + self._readback_timeout_s
        try:
            measured_mhz = await self._device_call(device.sm_clock_mhz)
            while measured_mhz != expected_mhz and self._clock.now_s() < deadline_s:
                poll_at_s = self._clock.now_s() + self._readback_poll_s
                await self._clock.sleep_until(min(poll_at_s, deadline_s))
                measured_mhz = await self._device_call(device.sm_clock_mhz)
        except GpuError as error:
            _LOG.warning("cannot read back the clock of GPU %d: %s", device.index, error)
            return 0
        return measured_mhz

    async def renew(
        self,
        gpu_indices: Sequence[int] | None,
        holder: str,
        ttl_s: float | None = None,
        trace_context: Context | None = None,
        principal: str = "",
    ) -> tuple[list[int], float | None]:
        """Extend holder's leases (all of them when ``gpu_indices`` is None).

        Returns the renewed GPUs and their new expiry (None when nothing was renewed).
        ``trace_context``: the caller's trace context, as for ``set_clock``.
        """
        lease_ttl_s = self.lease_ttl_s(ttl_s)
        # Renewals come every ttl/3 per GPU: a span only inside a caller's trace, never a root.
        parent_valid = trace.get_current_span(trace_context).get_span_context().is_valid
        with (
            self._tracer.start_as_current_span("voltana.agent.renew_lease", context=trace_context)
            if parent_valid
            else contextlib.nullcontext(trace.INVALID_SPAN)
        ) as span:
            span.set_attributes(
                {"voltana.lease.holder": holder, "voltana.lease.ttl_s": lease_ttl_s}
            )
            if gpu_indices is None:
                gpu_indices = self._leases.held_by(holder, self._clock.now_s(), principal)
            for gpu_index in gpu_indices:
                self.device(gpu_index)
            renewed: list[int] = []
            expires_at_s: float | None = None
            for gpu_index in gpu_indices:
                async with self._gpu_locks[gpu_index]:
                    now_s = self._clock.now_s()
                    lease = self._leases.renew(gpu_index, holder, lease_ttl_s, now_s, principal)
                    self._lease_changed(gpu_index, lease)
                renewed.append(gpu_index)
                expires_at_s = lease.expires_at_s
            span.set_attribute("voltana.lease.renewed_gpu_indices", renewed)
        return renewed, expires_at_s

    async def reset(
        self,
        gpu_index: int,
        reason: str,
        trace_context: Context | None = None,
        requester: tuple[str, str] | None = None,
    ) -> GpuClockStatus:
        """Unlock the GPU's clock (back to default) and drop its lease.

        ``requester`` (holder, principal) is a caller's: LeaseNotHeldError when another holder
        has a live lease on the GPU. None: the agent's own reset (start, stop, expiry).
        ``trace_context``: the caller's trace context, as for ``set_clock``.
        """
        device = self.device(gpu_index)
        async with self._gpu_locks[gpu_index]:
            if requester is not None:
                holder, principal = requester
                self._leases.check_releasable(gpu_index, holder, self._clock.now_s(), principal)
            await self._reset_locked(device, reason, trace_context)
        return await self.status(gpu_index)

    def check_releasable(self, gpu_indices: Sequence[int], holder: str, principal: str) -> None:
        """LeaseNotHeldError when another holder has a live lease on one of the GPUs."""
        for gpu_index in gpu_indices:
            self._leases.check_releasable(gpu_index, holder, self._clock.now_s(), principal)

    async def _reset_locked(
        self, device: GpuDevice, reason: str, trace_context: Context | None = None
    ) -> None:
        # Caller holds the GPU's lock.
        with self._tracer.start_as_current_span(
            "voltana.agent.reset_clocks", context=trace_context
        ) as span:
            span.set_attributes({"voltana.gpu.index": device.index, "voltana.reason": reason})
            lease = self._leases.release(device.index)
            self._lease_changed(device.index, None)
            self._locked_mhz.pop(device.index, None)
            if lease is not None:
                span.set_attribute("voltana.lease.holder", lease.holder)
            await self._device_call(device.reset_sm_clocks)
        _LOG.info("GPU %d back to default clocks: %s", device.index, shorten(reason, 300))

    async def reset_all(self, reason: str) -> list[GpuError]:
        """Reset every GPU, carrying on past failures; returns the failures."""
        failures: list[GpuError] = []
        for gpu_index in sorted(self._devices):
            try:
                await self.reset(gpu_index, reason)
            except GpuError as error:
                _LOG.error("cannot reset GPU %d (%s): %s", gpu_index, reason, error)
                failures.append(error)
        return failures

    def lease_state(self, gpu_index: int) -> tuple[Lease | None, int | None]:
        """The GPU's lease and locked clock (None at default clocks), without device I/O."""
        return self._leases.get(gpu_index), self._locked_mhz.get(gpu_index)

    async def status(self, gpu_index: int) -> GpuClockStatus:
        device = self.device(gpu_index)
        current_mhz = await self._device_call(device.sm_clock_mhz)
        return GpuClockStatus(
            gpu_index=gpu_index,
            current_sm_clock_mhz=current_mhz,
            locked_sm_clock_mhz=self._locked_mhz.get(gpu_index),
            lease=self._leases.get(gpu_index),
        )

    async def expire_leases(self) -> list[int]:
        """Reset every GPU whose lease has lapsed; returns those GPUs."""
        expired: list[int] = []
        for gpu_index in self._leases.expired(self._clock.now_s()):
            async with self._gpu_locks[gpu_index]:
                lease = self._leases.get(gpu_index)
                # Renewed or replaced while we waited for the lock.
                if lease is None or lease.is_live(self._clock.now_s()):
                    continue
                try:
                    await self._reset_locked(
                        self._devices[gpu_index], f"lease of {lease.holder!r} expired"
                    )
                except GpuError as error:
                    # The lease is gone either way; retrying would spin on a broken device.
                    _LOG.error("GPU %d lease expired but reset failed: %s", gpu_index, error)
            expired.append(gpu_index)
        return expired

    async def run_watchdog(self) -> None:
        """Reset GPUs as their leases lapse, until cancelled. Sleeps until the next expiry."""
        while True:
            self._leases_changed.clear()
            await self.expire_leases()
            next_expiry_s = self._leases.next_expiry_s()
            waiters: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(self._leases_changed.wait())
            ]
            if next_expiry_s is not None:
                waiters.append(asyncio.ensure_future(self._clock.sleep_until(next_expiry_s)))
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
