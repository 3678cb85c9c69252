"""The node agent's fail-safe watchdog: a small process that puts the agent's GPUs back to default
clocks when the agent cannot any more.

A lease guards against a dead controller: the agent resets a clock whose lease lapses. Nothing
guarded against a dead agent: killed by SIGKILL or the OOM killer, it left its GPUs pinned at
the last (possibly very low) clock until someone restarted it. The agent therefore starts this
process beside it (own session, so signals to the agent's process group spare it) and tells it,
one JSON line per change on the watchdog's stdin, when each GPU's lease ends:

- ``{"gpu": 0, "expires_in_s": 3.0}`` — a lease was taken or renewed;
- ``{"gpu": 0, "expires_in_s": null}`` — the agent put the GPU back to default clocks;
- ``{"stop": true}`` — the agent is stopping cleanly (it resets every GPU itself).

The watchdog resets every GPU when its stdin ends without ``stop`` (the kernel closes the
pipe when the agent dies, however it dies), and one GPU when its lease has been over for
``grace_s`` without word from the agent (the agent hangs). It resets through the same
``GpuDevice`` interface the agent uses (NVML, or the shared simulated GPU), then exits.

Run by ``voltana.services.agent.failsafe.FailsafeWatchdog``; prints ``ready`` once its devices
are open.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Sequence

from voltana.gpu import GpuDevice, GpuError, NvmlLibrary, SharedSimulatedGpu
from voltana.hardware import get_gpu
from voltana.services.agent.failsafe import BACKENDS, READY_LINE

_LOG = logging.getLogger("voltana.agent.failsafe")


def open_devices(args: argparse.Namespace) -> list[GpuDevice]:
    if args.backend == "sim-shared":
        spec = get_gpu(args.sim_gpu)
        indices = args.gpu_index or [0]
        return [SharedSimulatedGpu(spec, i, state_dir=args.sim_state_dir) for i in indices]
    library = NvmlLibrary()
    library.open()  # kept open for the life of the process
    return list(library.devices(args.gpu_index or None))


class Watchdog:
    def __init__(self, devices: Sequence[GpuDevice], grace_s: float) -> None:
        self._devices = {device.index: device for device in devices}
        self._grace_s = grace_s
        # Monotonic time after which each leased GPU is reset unless the agent says otherwise.
        self._deadlines: dict[int, float] = {}
        self._buffer = b""

    def reset_all(self, why: str) -> None:
        self.reset(sorted(self._devices), why)

    def reset(self, indices: Sequence[int], why: str) -> None:
        for index in indices:
            device = self._devices.get(index)
            if device is None:
                continue
            try:
                device.reset_sm_clocks()
                _LOG.warning("fail-safe: GPU %d back to default clocks (%s)", index, why)
            except GpuError as error:
                _LOG.error("fail-safe: cannot reset GPU %d (%s): %s", index, why, error)
            self._deadlines.pop(index, None)

    def handle(self, line: bytes) -> bool:
        """Apply one message; False when the agent said it stops."""
        try:
            message = json.loads(line)
            if message.get("stop"):
                return False
            gpu = int(message["gpu"])
            expires_in_s = message["expires_in_s"]
        except (ValueError, KeyError, TypeError, AttributeError):
            _LOG.error("fail-safe: ignoring a malformed message %r", line[:200])
            return True
        if expires_in_s is None:
            self._deadlines.pop(gpu, None)
        else:
            self._deadlines[gpu] = time.monotonic() + float(expires_in_s) + self._grace_s
        return True

    def run(self, fd: int) -> str:
        """Serve until the agent stops ("stop") or dies ("agent gone")."""
        while True:
            now = time.monotonic()
            timeout_s = max(0.0, min(self._deadlines.values()) - now) if self._deadlines else None
            readable, _, _ = select.select([fd], [], [], timeout_s)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.reset_all("the node agent died")
                    return "agent gone"
                self._buffer += chunk
                *lines, self._buffer = self._buffer.split(b"\n")
                for line in lines:
                    if line.strip() and not self.handle(line):
                        return "stop"
            # Messages already read win over a deadline that passed meanwhile.
            now = time.monotonic()
            overdue = sorted(i for i, deadline in self._deadlines.items() if deadline <= now)
            if overdue:
                self.reset(overdue, "the node agent let a lease lapse without resetting it")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voltana-agent-failsafe", description=__doc__)
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--gpu-index", type=int, action="append", default=[])
    parser.add_argument("--sim-gpu", default="a100-80g")
    parser.add_argument("--sim-state-dir", default="")
    parser.add_argument("--grace-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Its own session spares it the agent's process-group signals; a terminal's Ctrl-C too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        devices = open_devices(args)
    except GpuError as error:
        print(f"fail-safe watchdog: cannot open the GPUs: {error}", file=sys.stderr)
        return 1
    watchdog = Watchdog(devices, args.grace_s)

    def on_sigterm(signum: int, frame: object) -> None:
        watchdog.reset_all("the watchdog was told to stop (SIGTERM)")
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    print(READY_LINE, flush=True)
    outcome = watchdog.run(sys.stdin.fileno())
    _LOG.info("fail-safe watchdog exits: %s", outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
