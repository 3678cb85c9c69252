"""Placement quality is unchanged by hot-path work: a recorded trace (snapshots of a 4P4D
cluster under changing load, 300 requests) replayed through the router's placement path - its
live cluster view with the in-flight ledger and arrival windows, and ``run_policy`` - gives the
same placements as the code the trace was recorded with, for every router.

``tests/data/placement_trace.json`` holds the trace and the placements the router made before
the hot-path changes (recorded at commit f4cafa3 with
``PYTHONPATH=<that checkout> python tests/test_router_placement_replay.py --record``).
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from voltana.contract.instances import InstanceInfo
from voltana.contract.state import ClusterSnapshot, InstanceState, Phase, RequestSpec, SloTarget
from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.policy.base import PolicyContext, RoutingPolicy
from voltana.policy.registry import build_router, build_suite
from voltana.services.router.cluster import LiveCluster
from voltana.services.router.servicer import run_policy

pytestmark = pytest.mark.unit

TRACE_PATH = Path(__file__).parent / "data" / "placement_trace.json"
ROUTERS = ("round-robin", "least-loaded", "ecoroute", "voltana", "suite:voltana-paper")
GPU_KEY = "a100-80g"
# Request i is dispatched at once, reaches its decode instance one request later and ends five
# requests later (what the router's ledger sees of it).
DECODE_AFTER = 1
FINISH_AFTER = 5


@functools.cache
def context() -> PolicyContext:
    gpu = get_gpu(GPU_KEY)
    perf = AnalyticalPerformanceModel.for_hardware(gpu, get_model("llama-3.1-8b"))
    # The whole clock range, as when the trace was recorded (policies keep to the calibrated
    # range by default since; a different clock set is a different router, not a hot path).
    return PolicyContext(gpu, perf, SloTarget(), allow_extrapolated_clocks=True)


def build(name: str) -> RoutingPolicy:
    if name.startswith("suite:"):
        return build_suite(name.removeprefix("suite:"), context()).router
    return build_router(name, context())


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


# ---- the trace -------------------------------------------------------------------------------


def record_trace(seed: int = 20261207) -> list[dict[str, Any]]:
    """Snapshots every 20 requests (instances' load drifting), requests 10-40 ms apart."""
    rng = random.Random(seed)
    capacity = context().perf.kv_capacity_tokens()
    events: list[dict[str, Any]] = []
    at_s = 0.0
    for request in range(300):
        if request % 20 == 0:
            states = []
            for i in range(4):
                queue = rng.randint(0, 3)
                states.append(
                    {
                        "instance_id": f"prefill-{i}",
                        "phase": "prefill",
                        "sm_clock_mhz": rng.choice((1410, 1200, 900)),
                        "queue_len": queue,
                        "queued_tokens": queue * rng.randint(200, 3000),
                        "running_prefill_tokens": rng.choice((0, rng.randint(256, 8192))),
                        "observed_at_s": at_s - rng.uniform(0.0, 0.05),
                    }
                )
                batch = rng.randint(0, 120)
                states.append(
                    {
                        "instance_id": f"decode-{i}",
                        "phase": "decode",
                        "sm_clock_mhz": rng.choice((1410, 1200, 900)),
                        "running_batch": batch,
                        "kv_tokens_used": min(capacity, batch * rng.randint(300, 2500)),
                        "kv_tokens_capacity": capacity,
                        "max_running_requests": 256,
                        "recent_itl_ms": rng.uniform(8.0, 40.0),
                        "observed_at_s": at_s - rng.uniform(0.0, 0.05),
                    }
                )
            events.append({"snapshot": {"now_s": at_s, "states": states}})
        at_s += rng.uniform(0.01, 0.04)
        events.append(
            {
                "request": {
                    "at_s": at_s,
                    "input_tokens": rng.randint(50, 6000),
                    "max_output_tokens": rng.randint(4, 512),
                }
            }
        )
    return events


def _state(fields: dict[str, Any]) -> InstanceState:
    values = dict(fields)
    phase = Phase.PREFILL if values.pop("phase") == "prefill" else Phase.DECODE
    return InstanceState(phase=phase, gpu_key=GPU_KEY, last_activity_s=0.0, **values)


def replay(events: list[dict[str, Any]], policy: RoutingPolicy) -> list[list[str]]:
    """The (prefill, decode) placement of every request of the trace."""
    clock = FakeClock()
    cluster = LiveCluster(clock=clock)
    placements: list[list[str]] = []
    for event in events:
        if "snapshot" in event:
            snapshot_event = event["snapshot"]
            states = [_state(fields) for fields in snapshot_event["states"]]
            snapshot = ClusterSnapshot(
                now_s=snapshot_event["now_s"],
                prefill={s.instance_id: s for s in states if s.phase is Phase.PREFILL},
                decode={s.instance_id: s for s in states if s.phase is Phase.DECODE},
            )
            infos = {
                s.instance_id: InstanceInfo(
                    s.instance_id, s.phase, GPU_KEY, f"http://{s.instance_id}"
                )
                for s in states
            }
            clock.now_s = snapshot_event["now_s"]
            cluster.update(snapshot, infos)
            continue
        request = event["request"]
        clock.now_s = request["at_s"]
        index = len(placements)
        spec = RequestSpec(
            input_tokens=request["input_tokens"],
            max_output_tokens=request["max_output_tokens"],
            arrival_s=cluster.now_s(),
        )
        placement = run_policy(policy, spec, cluster.routable())
        cluster.record_placement(index, placement, spec)
        cluster.reached(index, placement.prefill_id)
        placements.append([placement.prefill_id, placement.decode_id])
        if index >= DECODE_AFTER:
            cluster.reached(index - DECODE_AFTER, placements[index - DECODE_AFTER][1])
        if index >= FINISH_AFTER:
            cluster.finished(index - FINISH_AFTER)
    return placements


# ---- the test --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(TRACE_PATH.read_text())
    return loaded


@pytest.mark.parametrize("router", ROUTERS)
def test_the_recorded_trace_places_as_before(recorded: dict[str, Any], router: str) -> None:
    expected = recorded["placements"][router]
    placements = replay(recorded["events"], build(router))
    assert len(placements) == len(expected) == 300
    mismatches = [i for i, (a, b) in enumerate(zip(placements, expected, strict=True)) if a != b]
    assert not mismatches, f"{len(mismatches)} placements differ, first at request {mismatches[0]}"
    # The trace exercises the choice: more than one instance of each phase gets requests.
    assert len({p for p, _ in placements}) > 1 or router == "suite:voltana-paper"
    assert len({d for _, d in placements}) > 1


def main() -> int:
    parser = argparse.ArgumentParser(description="record the placement trace")
    parser.add_argument("--record", action="store_true", help="write " + str(TRACE_PATH))
    args = parser.parse_args()
    if not args.record:
        parser.print_help()
        return 2
    events = record_trace()
    document = {
        "events": events,
        "placements": {router: replay(events, build(router)) for router in ROUTERS},
    }
    TRACE_PATH.parent.mkdir(exist_ok=True)
    TRACE_PATH.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    print(f"wrote {TRACE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
