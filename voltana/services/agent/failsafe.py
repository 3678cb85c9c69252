"""The agent's side of its fail-safe watchdog (the process is ``failsafe_main``): start it,
tell it of every lease change, tell it when the agent stops on purpose.

Writes go straight to the pipe (small lines, never more than the pipe holds), so the watchdog
knows of a lease as soon as the agent does, whatever the event loop is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from voltana.errors import UnavailableError
from voltana.services.agent.clock import AgentClock

_LOG = logging.getLogger(__name__)
# The watchdog's entry point (not imported by the agent: it runs as its own process).
MODULE = "voltana.services.agent.failsafe_main"
# What it prints once its GPUs are open, and the backends whose GPUs outlive the agent.
READY_LINE = "ready"
BACKENDS = ("nvml", "sim-shared")
DEFAULT_READY_TIMEOUT_S = 30.0
_EXIT_WAIT_S = 5.0


def watchdog_command(
    backend: str,
    gpu_indices: Sequence[int],
    *,
    sim_gpu_key: str = "",
    sim_state_dir: str = "",
    grace_s: float = 1.0,
) -> list[str]:
    command = [sys.executable, "-m", MODULE, "--backend", backend, "--grace-s", repr(grace_s)]
    for index in gpu_indices:
        command += ["--gpu-index", str(index)]
    if backend == "sim-shared":
        command += ["--sim-gpu", sim_gpu_key, "--sim-state-dir", sim_state_dir]
    return command


class FailsafeWatchdog:
    """One watchdog process; ``lease_changed`` is a ``ClockManager`` lease listener."""

    def __init__(self, command: Sequence[str], clock: AgentClock) -> None:
        self._command = list(command)
        self._clock = clock
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> None:
        """Start the process; UnavailableError unless it opened the GPUs in time."""
        process = subprocess.Popen(
            self._command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # the agent's process-group signals must not reach it
        )
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(
                asyncio.to_thread(process.stdout.readline), ready_timeout_s
            )
        except TimeoutError:
            line = b""
        if line.decode(errors="replace").strip() != READY_LINE:
            process.kill()
            await asyncio.to_thread(process.wait)
            raise UnavailableError(
                "the fail-safe watchdog did not start (it resets the GPUs if the agent dies; "
                f"exit status {process.returncode}, see its log above)"
            )
        process.stdout.close()
        self._process = process
        _LOG.info("fail-safe watchdog running (pid %d)", process.pid)

    def _send(self, message: dict[str, object]) -> None:
        process = self._process
        if process is None or process.stdin is None:
            return
        try:
            os.write(process.stdin.fileno(), json.dumps(message).encode() + b"\n")
        except OSError as error:  # it died: the agent still resets on its own leases
            _LOG.error(
                "the fail-safe watchdog is gone (%s); GPUs are unguarded if the agent dies", error
            )
            self._process = None

    def lease_changed(self, gpu_index: int, expires_at_s: float | None) -> None:
        expires_in_s = (
            None if expires_at_s is None else max(0.0, expires_at_s - self._clock.now_s())
        )
        self._send({"gpu": gpu_index, "expires_in_s": expires_in_s})

    async def stop(self) -> None:
        """Tell it the agent stops on purpose (it has reset the GPUs), and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            os.write(process.stdin.fileno(), b'{"stop": true}\n')
            process.stdin.close()
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), _EXIT_WAIT_S)
        except TimeoutError:
            process.kill()
            await asyncio.to_thread(process.wait)
