"""The device check behind scripts/device-check: the agent's GPU readings against nvidia-smi.

Read-only by construction: it calls NVML's query functions and `nvidia-smi --query-*`, never a
set/reset/lock function, so it can run on a lent machine. Per GPU it compares the name,
supported SM clocks, current SM clock, power draw and limit that the node agent's reading code
(``NvmlGpu``, ``read_gpu_sample``) — or a running agent, with ``agent_address`` — reports with
what nvidia-smi reports, and checks that the energy counter advances at the measured power.
"""

from __future__ import annotations

import contextlib
import csv
import io
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from voltana.gpu.errors import GpuError
from voltana.gpu.host import GpuFacts, read_gpu_facts
from voltana.gpu.nvml import NvmlLibrary
from voltana.gpu.sample import GpuSample

Runner = Callable[[Sequence[str]], str]

SMI_FIELDS = (
    "index",
    "name",
    "uuid",
    "driver_version",
    "clocks.sm",
    "power.draw",
    "enforced.power.limit",
)
# Readings taken a moment apart differ: clocks by a step or two, power by noise.
CLOCK_TOLERANCE_MHZ = 30
POWER_TOLERANCE_W = 10.0
POWER_TOLERANCE_FRACTION = 0.10
ENERGY_TOLERANCE_FRACTION = 0.15


@dataclass(frozen=True)
class SmiGpu:
    index: int
    name: str
    uuid: str
    driver_version: str
    sm_clock_mhz: int | None
    power_w: float | None
    power_limit_w: float | None


@dataclass(frozen=True)
class Comparison:
    gpu_index: int
    what: str
    agent: str
    nvidia_smi: str
    # None = not comparable (a reading is missing).
    matches: bool | None


def run_command(command: Sequence[str]) -> str:
    completed = subprocess.run(list(command), capture_output=True, text=True, timeout=30)
    if completed.returncode != 0:
        detail = completed.stderr.strip() or completed.stdout.strip()
        raise RuntimeError(f"{' '.join(command)} exited with {completed.returncode}: {detail}")
    return completed.stdout


def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


def parse_smi_gpus(text: str) -> list[SmiGpu]:
    """``nvidia-smi --query-gpu=<SMI_FIELDS> --format=csv,noheader,nounits``."""
    gpus = []
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        if not row:
            continue
        if len(row) != len(SMI_FIELDS):
            raise ValueError(f"unexpected nvidia-smi row {row!r}")
        clock = _number(row[4])
        gpus.append(
            SmiGpu(
                index=int(row[0]),
                name=row[1].strip(),
                uuid=row[2].strip(),
                driver_version=row[3].strip(),
                sm_clock_mhz=int(clock) if clock is not None else None,
                power_w=_number(row[5]),
                power_limit_w=_number(row[6]),
            )
        )
    return gpus


def parse_supported_sm_clocks(text: str) -> tuple[int, ...]:
    """SM clocks at the highest memory clock, from
    ``nvidia-smi -i N --query-supported-clocks=mem,gr --format=csv,noheader,nounits``."""
    pairs = []
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        if len(row) == 2:
            memory, graphics = _number(row[0]), _number(row[1])
            if memory is not None and graphics is not None:
                pairs.append((int(memory), int(graphics)))
    if not pairs:
        return ()
    top_memory = max(memory for memory, _ in pairs)
    return tuple(sorted({graphics for memory, graphics in pairs if memory == top_memory}))


def _power_matches(agent_w: float, smi_w: float) -> bool:
    return abs(agent_w - smi_w) <= max(POWER_TOLERANCE_W, POWER_TOLERANCE_FRACTION * smi_w)


def compare(facts: GpuFacts, smi: SmiGpu, smi_clocks: tuple[int, ...]) -> list[Comparison]:
    """The agent's view of one GPU against nvidia-smi's."""
    index = facts.index

    def row(what: str, agent: object, other: object, matches: bool | None) -> Comparison:
        return Comparison(index, what, str(agent), str(other), matches)

    clocks = facts.supported_sm_clocks_mhz
    rows = [
        row("name", facts.name, smi.name, facts.name == smi.name),
        row("uuid", facts.uuid, smi.uuid, facts.uuid == smi.uuid),
        row(
            "supported SM clocks",
            f"{len(clocks)}: {clocks[0]}-{clocks[-1]} MHz",
            f"{len(smi_clocks)}: {smi_clocks[0]}-{smi_clocks[-1]} MHz" if smi_clocks else "-",
            set(clocks) == set(smi_clocks) if smi_clocks else None,
        ),
    ]
    clock, smi_clock = facts.sample.sm_clock_mhz, smi.sm_clock_mhz
    rows.append(
        row(
            "SM clock (MHz)",
            clock,
            smi_clock if smi_clock is not None else "-",
            abs(clock - smi_clock) <= CLOCK_TOLERANCE_MHZ if smi_clock is not None else None,
        )
    )
    power, smi_power = facts.sample.power_w, smi.power_w
    rows.append(
        row(
            "power (W)",
            f"{power:.1f}",
            f"{smi_power:.1f}" if smi_power is not None else "-",
            _power_matches(power, smi_power) if smi_power is not None else None,
        )
    )
    limit, smi_limit = facts.power_limit_w, smi.power_limit_w
    rows.append(
        row(
            "power limit (W)",
            f"{limit:.0f}" if limit is not None else "-",
            f"{smi_limit:.0f}" if smi_limit is not None else "-",
            abs(limit - smi_limit) <= 1.0 if limit is not None and smi_limit is not None else None,
        )
    )
    return rows


def energy_check(
    index: int,
    first: GpuFacts,
    second: GpuFacts,
    mean_power_w: float,
) -> Comparison:
    """The energy counter's increase over the interval against the power read meanwhile."""
    if first.energy_j is None or second.energy_j is None:
        return Comparison(index, "energy counter", "not supported", "-", None)
    elapsed_s = second.sample.timestamp_s - first.sample.timestamp_s
    counted_w = (second.energy_j - first.energy_j) / elapsed_s if elapsed_s > 0 else 0.0
    matches = abs(counted_w - mean_power_w) <= max(
        POWER_TOLERANCE_W, ENERGY_TOLERANCE_FRACTION * mean_power_w
    )
    return Comparison(
        index,
        f"energy counter over {elapsed_s:.1f} s (W)",
        f"{counted_w:.1f}",
        f"{mean_power_w:.1f} (power read meanwhile)",
        matches,
    )


def run_device_check(
    *,
    nvml: Any = None,
    runner: Runner = run_command,
    interval_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> Iterator[Comparison | str]:
    """Comparisons, with lines of context (strings) between them. Read-only."""
    library = NvmlLibrary(nvml)
    library.open()
    try:
        yield f"driver {library.driver_version()}"
        gpus = library.devices()
        smi = {gpu.index: gpu for gpu in parse_smi_gpus(query_smi_gpus(runner))}
        before = {gpu.index: read_gpu_facts(gpu, clock()) for gpu in gpus}
        for gpu in gpus:
            facts = before[gpu.index]
            yield (
                f"GPU {gpu.index}: {facts.name} (catalog: {facts.catalog_key or 'none'}), "
                f"supported SM clocks {list(facts.supported_sm_clocks_mhz)}"
            )
            if gpu.index not in smi:
                yield Comparison(gpu.index, "listed by nvidia-smi", "yes", "no", False)
                continue
            try:
                smi_clocks = parse_supported_sm_clocks(_query_clocks(runner, gpu.index))
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                yield f"GPU {gpu.index}: nvidia-smi supported clocks unavailable: {error}"
                smi_clocks = ()
            yield from compare(facts, smi[gpu.index], smi_clocks)
        # Energy: the counter's increase against power sampled over the same interval.
        powers: dict[int, list[float]] = {gpu.index: [] for gpu in gpus}
        steps = 10
        for _ in range(steps):
            sleep(interval_s / steps)
            for gpu in gpus:
                with contextlib.suppress(GpuError):
                    powers[gpu.index].append(gpu.power_w())
        for gpu in gpus:
            after = read_gpu_facts(gpu, clock())
            readings = powers[gpu.index] or [after.sample.power_w]
            yield energy_check(gpu.index, before[gpu.index], after, sum(readings) / len(readings))
    finally:
        library.close()


def query_smi_gpus(runner: Runner = run_command) -> str:
    fields = ",".join(SMI_FIELDS)
    return runner(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"])


def _query_clocks(runner: Runner, index: int) -> str:
    return runner(
        [
            "nvidia-smi",
            "-i",
            str(index),
            "--query-supported-clocks=mem,gr",
            "--format=csv,noheader,nounits",
        ]
    )


async def running_agent_facts(address: str, timeout_s: float = 5.0) -> list[GpuFacts]:
    """What a running node agent reports (ListGpus, GetGpuSample: read-only RPCs)."""
    from voltana.hardware.gpu_names import catalog_key_for_device_name
    from voltana.rpc import create_channel
    from voltana.v1 import agent_pb2, agent_pb2_grpc

    async with create_channel(address) as channel:
        stub = agent_pb2_grpc.NodeAgentServiceStub(channel)
        listing = await stub.ListGpus(agent_pb2.ListGpusRequest(), timeout=timeout_s)
        samples = await stub.GetGpuSample(agent_pb2.GetGpuSampleRequest(), timeout=timeout_s)
    by_index = {sample.gpu_index: sample for sample in samples.samples}
    facts = []
    for info in listing.gpus:
        sample = by_index.get(info.gpu_index)
        if sample is None:
            continue
        facts.append(
            GpuFacts(
                index=info.gpu_index,
                name=info.name,
                uuid=info.uuid,
                catalog_key=info.gpu_key or catalog_key_for_device_name(info.name),
                supported_sm_clocks_mhz=tuple(info.supported_sm_clocks_mhz),
                default_sm_clock_mhz=info.default_sm_clock_mhz,
                sample=GpuSample(
                    info.gpu_index,
                    sample.timestamp_s,
                    sample.sm_clock_mhz,
                    sample.power_w,
                    sample.energy_j,
                ),
                energy_j=sample.energy_j if info.energy_counter_supported else None,
                power_limit_w=info.power_limit_w or None,
                persistence_mode=None,
            )
        )
    return facts
