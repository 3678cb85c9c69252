"""`voltana doctor`: first-run checks of a GPU host, read-only unless asked otherwise.

Checks that NVML loads, lists each GPU with its catalog entry, supported SM clocks, power,
energy counter and persistence mode, and whether this process may lock clocks (CAP_SYS_ADMIN).
Nothing is changed unless `--try-lock` is given: then each GPU is locked at its default clock
and reset right away, which proves the permission on this very host.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from voltana.gpu import GpuError, NvmlLibrary
from voltana.gpu.host import ClockPrivilege, GpuFacts, clock_lock_privilege, read_gpu_facts
from voltana.gpu.nvml import NvmlGpu

Level = Literal["ok", "warn", "fail"]

EPILOG = """\
examples:
  voltana doctor                 # read-only
  sudo voltana doctor --try-lock # also lock each GPU at its default clock and reset it

Exit code 0 when nothing failed, 1 otherwise. docs/gpu-host.md explains every finding.
"""


@dataclass(frozen=True)
class Finding:
    level: Level
    text: str


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "doctor",
        help="check this GPU host: NVML, clocks, energy counter, clock-locking permission",
        description="First-run checks of a GPU host for the node agent. Read-only unless "
        "--try-lock is given.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--try-lock",
        action="store_true",
        help="lock each GPU at its default SM clock, then reset it (changes clocks briefly)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return diagnose(try_lock=args.try_lock)


def diagnose(
    *,
    try_lock: bool = False,
    nvml: Any = None,
    privilege: ClockPrivilege | None = None,
    out: TextIO | None = None,
) -> int:
    """Print the findings; 0 when none failed. ``nvml``: a pynvml stand-in (tests)."""
    out = out or sys.stdout
    mode = "locks and resets each GPU's clock" if try_lock else "read-only"
    out.write(f"voltana doctor ({mode})\n")
    failed = False
    for finding in findings(try_lock, nvml, privilege or clock_lock_privilege()):
        out.write(f"{finding.level:<5} {finding.text}\n")
        failed = failed or finding.level == "fail"
    return 1 if failed else 0


def findings(try_lock: bool, nvml: Any, privilege: ClockPrivilege) -> Iterator[Finding]:
    library = NvmlLibrary(nvml)
    try:
        library.open()
    except GpuError as error:
        yield Finding("fail", f"NVML: {error}")
        return
    try:
        try:
            driver = library.driver_version()
        except GpuError as error:
            driver = f"unknown ({error})"
        gpus = library.devices()
        yield Finding(
            "ok" if gpus else "fail", f"NVML: driver {driver}, {len(gpus)} GPU(s) visible"
        )
        for gpu in gpus:
            try:
                facts = read_gpu_facts(gpu, time.time())
            except GpuError as error:
                yield Finding("fail", f"GPU {gpu.index}: {error}")
                continue
            yield from _gpu_findings(facts)
        if privilege.allowed:
            yield Finding("ok", f"clock locking allowed: {privilege.reason}")
        else:
            yield Finding(
                "fail",
                f"clock locking not allowed: {privilege.reason}; run the node agent as root "
                "(or a container with cap_add: [SYS_ADMIN])",
            )
        if try_lock:
            for gpu in gpus:
                yield _try_lock(gpu)
    finally:
        library.close()


def _gpu_findings(facts: GpuFacts) -> Iterator[Finding]:
    label = f"GPU {facts.index} {facts.name}"
    if facts.catalog_key:
        yield Finding("ok", f"{label}: catalog GPU {facts.catalog_key}")
    else:
        yield Finding(
            "warn",
            f"{label}: not in the GPU catalog; measure a profile (voltana profile) and run "
            "the controller and router with --profile",
        )
    clocks = facts.supported_sm_clocks_mhz
    yield Finding(
        "ok" if len(clocks) > 1 else "warn",
        f"{label}: {len(clocks)} supported SM clocks, {clocks[0]}-{clocks[-1]} MHz; default "
        f"{facts.default_sm_clock_mhz} MHz, now {facts.sample.sm_clock_mhz} MHz",
    )
    limit = f" of a {facts.power_limit_w:.0f} W limit" if facts.power_limit_w else ""
    yield Finding("ok", f"{label}: drawing {facts.sample.power_w:.1f} W{limit}")
    if facts.energy_j is None:
        yield Finding(
            "warn",
            f"{label}: no energy counter (pre-Volta); energy is integrated from power samples",
        )
    else:
        yield Finding("ok", f"{label}: energy counter at {facts.energy_j:.1f} J")
    if facts.persistence_mode is False:
        yield Finding(
            "warn",
            f"{label}: persistence mode is off; turn it on (nvidia-smi -pm 1) so the driver "
            "stays loaded and clock settings are not dropped between clients",
        )
    elif facts.persistence_mode:
        yield Finding("ok", f"{label}: persistence mode on")


def _try_lock(gpu: NvmlGpu) -> Finding:
    clock_mhz = gpu.default_sm_clock_mhz
    try:
        gpu.set_locked_sm_clock_mhz(clock_mhz, clock_mhz)
    except GpuError as error:
        return Finding("fail", f"GPU {gpu.index}: locking {clock_mhz} MHz failed: {error}")
    try:
        gpu.reset_sm_clocks()
    except GpuError as error:
        return Finding(
            "fail",
            f"GPU {gpu.index}: locked {clock_mhz} MHz but the reset failed ({error}); reset it "
            "with nvidia-smi -rgc",
        )
    return Finding("ok", f"GPU {gpu.index}: locked {clock_mhz} MHz and reset")
