"""Readings of tensor-parallel instances: one per instance, from the samples of all its GPUs.

An instance on several GPUs (one node agent or several) gets one GPU reading in the store: its
GPUs' energy counters and power summed, and the lowest SM clock (the ranks wait for the
slowest). A group reading exists once every GPU of the group has reported; after that, each new
sample of any member updates it. Sums of monotonic counters stay monotonic.
"""

from __future__ import annotations

from dataclasses import dataclass

from voltana.contract.instances import GpuRef, InstanceInfo


@dataclass(frozen=True, slots=True)
class MemberReading:
    ts_s: float
    sm_clock_mhz: int
    power_w: float
    energy_j: float


class GpuGroups:
    """Latest reading per GPU of each multi-GPU instance (single-GPU ones pass through)."""

    def __init__(self) -> None:
        self._latest: dict[str, dict[GpuRef, MemberReading]] = {}

    def forget(self, instance_id: str) -> None:
        self._latest.pop(instance_id, None)

    def combine(
        self, info: InstanceInfo, gpu: GpuRef, reading: MemberReading
    ) -> MemberReading | str | None:
        """The instance's reading after ``reading`` of ``gpu``; None while some GPU of the group
        has not reported yet; a string saying why the sample is refused."""
        refs = info.gpu_refs
        if len(refs) <= 1:
            return reading
        if gpu not in refs:
            # The agent may advertise another name for itself than the registration uses
            # (e.g. its bound address): the index alone decides when it is unambiguous.
            same_index = [ref for ref in refs if ref.gpu_index == gpu.gpu_index]
            if len(same_index) != 1:
                return (
                    f"GPU {gpu.gpu_index} of agent {gpu.agent_address!r} is not one of "
                    f"{info.instance_id!r}'s"
                )
            gpu = same_index[0]
        latest = self._latest.setdefault(info.instance_id, {})
        previous = latest.get(gpu)
        if previous is not None and 0 < reading.ts_s < previous.ts_s:
            return f"GPU sample of {info.instance_id!r} at {reading.ts_s} is older than the last"
        latest[gpu] = reading
        members = [latest[ref] for ref in refs if ref in latest]
        if len(members) < len(refs):
            return None
        return MemberReading(
            ts_s=max(member.ts_s for member in members),
            sm_clock_mhz=min(member.sm_clock_mhz for member in members),
            power_w=sum(member.power_w for member in members),
            energy_j=sum(member.energy_j for member in members),
        )
