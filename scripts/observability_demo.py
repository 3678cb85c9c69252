#!/usr/bin/env python3
"""See the dashboard for real: `voltana up --sim` under load, scraped by a real Prometheus,
rendered to a PNG.

Starts ``voltana up --sim --policy voltana`` with its /metrics servers, a Prometheus server
(the ``prometheus`` binary: Debian ``apt-get install prometheus``) scraping every printed
``<service>.metrics`` endpoint and every engine's SGLang /metrics each second, replays a
light-then-heavy synthetic load with ``voltana bench``, then renders
docker/grafana/dashboards/voltana.json with scripts/render_dashboard.py (headless Chromium).
Everything it starts is stopped at the end.

    python scripts/observability_demo.py --out dashboard.png [--seconds 60] [--policy voltana]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import render_dashboard  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def started(command: list[str], **kwargs: object) -> Iterator[subprocess.Popen[str]]:
    """A child process, stopped (SIGINT, then SIGKILL) on the way out."""
    process = subprocess.Popen(command, text=True, **kwargs)  # type: ignore[call-overload]
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def read_addresses(process: subprocess.Popen[str]) -> dict[str, str]:
    assert process.stdout is not None
    addresses: dict[str, str] = {}
    for line in process.stdout:
        if line.startswith("#"):
            return addresses
        name, address = line.split()
        addresses[name] = address
    raise SystemExit("observability_demo: error: voltana up ended before printing its addresses")


def prometheus_config(addresses: dict[str, str]) -> str:
    voltana = [
        u.split("//")[1].split("/")[0] for n, u in addresses.items() if n.endswith(".metrics")
    ]
    engines = [u.split("//")[1] for n, u in addresses.items() if n.endswith(".engine")]
    return json.dumps(  # JSON is YAML
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "voltana", "static_configs": [{"targets": voltana}]},
                {"job_name": "sglang", "static_configs": [{"targets": engines}]},
            ],
        }
    )


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"observability_demo: error: {url} not ready in {timeout_s:g} s")
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--html", type=Path, help="also keep the rendered HTML")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each load phase")
    parser.add_argument("--policy", default="voltana")
    parser.add_argument("--prometheus-bin", default="prometheus")
    args = parser.parse_args()
    if shutil.which(args.prometheus_bin) is None:
        raise SystemExit(
            "observability_demo: error: no prometheus binary (apt-get install prometheus)"
        )
    voltana = [sys.executable, "-m", "voltana.cli.main"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as workdir:
        up = [
            *voltana,
            "up",
            "--sim",
            "--policy",
            args.policy,
            "--metrics-port",
            str(free_port()),
            "--log-level",
            "WARNING",
        ]
        with started(up, stdout=subprocess.PIPE, env=env) as stack:
            addresses = read_addresses(stack)
            print("\n".join(f"{k}  {v}" for k, v in addresses.items()), file=sys.stderr)
            config = Path(workdir) / "prometheus.yml"
            config.write_text(prometheus_config(addresses))
            web = f"127.0.0.1:{free_port()}"
            prometheus = [
                args.prometheus_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir}/tsdb",
                f"--web.listen-address={web}",
                "--log.level=warn",
            ]
            with started(prometheus, stderr=subprocess.DEVNULL):
                wait_ready(f"http://{web}/-/ready")
                started_s = time.time()
                for rate in (2, 8):  # light, then heavy
                    # Lengths drawn like the Azure conversation trace's.
                    spec = f"synthetic:poisson:rate={rate},duration={args.seconds:g},seed={rate}"
                    subprocess.run(
                        [
                            *voltana,
                            "bench",
                            "--target",
                            addresses["router"],
                            "--telemetry",
                            addresses["telemetry"],
                            "--trace",
                            spec,
                            "--policy-label",
                            f"{args.policy}@{rate}rps",
                            "--quiet",
                        ],
                        check=True,
                        env=env,
                    )
                time.sleep(10)  # idle tail: clocks park
                minutes = (time.time() - started_s) / 60 + 0.2
                render_args = [
                    "--prometheus",
                    f"http://{web}",
                    "--minutes",
                    f"{minutes:.2f}",
                    "--step-s",
                    "1",
                    "--rate-interval",
                    "10s",
                    "--out",
                    str(args.out),
                ]
                if args.html:
                    render_args += ["--html", str(args.html)]
                render_dashboard.main(render_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
