"""SLO classes, live: the router keeps which targets each instance serves, tells the controller
with its placement notices (and when that changes, and again before the controller's copy
lapses), and the controller runs each instance's clock law against the tightest of them, as the
simulator does on the same books (voltana.control.serving)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc.aio
import pytest
from security_helpers import SECURITY

from voltana.contract.instances import InstanceInfo
from voltana.contract.state import (
    ClusterSnapshot,
    InstanceState,
    Phase,
    Placement,
    RequestSpec,
    SloTarget,
)
from voltana.control import MAX_NOTIFIED_INSTANCES, NOTHING_SERVED, Served, ServedReports
from voltana.control.serving import ServedTargets
from voltana.rpc import create_channel
from voltana.sdk import GenerationSummary, VoltanaClient
from voltana.services.router.cluster import LiveCluster
from voltana.services.router.placements import ControllerTrigger
from voltana.services.telemetry.convert import slo_from_proto
from voltana.stack import SimStack, SimStackSettings
from voltana.v1 import controller_pb2, controller_pb2_grpc

CLUSTER = SloTarget(ttft_ms=800.0, itl_ms=50.0)
LOOSE = SloTarget(ttft_ms=5000.0, itl_ms=200.0)
TIGHT = SloTarget(ttft_ms=400.0, itl_ms=30.0)


# ---- the summaries routers send and the controller keeps -------------------------------------


@pytest.mark.unit
def test_a_summary_keeps_the_cluster_slo_symbolic() -> None:
    served = ServedTargets()
    assert served.summary("d0") == NOTHING_SERVED and NOTHING_SERVED.empty
    served.open("a", ("p0", "d0"), None)
    served.open("b", ("p1", "d0"), LOOSE)
    served.open("c", ("p1", "d0"), TIGHT)
    assert served.summary("d0") == Served(cluster_slo=True, own_slo=TIGHT)
    assert served.summary("p1") == Served(cluster_slo=False, own_slo=TIGHT)
    assert served.summary("p0") == Served(cluster_slo=True)
    # The controller resolves it against the cluster SLO of its own time.
    assert served.summary("p0").target(TIGHT) == TIGHT
    assert Served(cluster_slo=True, own_slo=LOOSE).target(CLUSTER) == CLUSTER
    assert NOTHING_SERVED.target(CLUSTER) is None
    assert sorted(served.instances()) == ["d0", "p0", "p1"]
    assert served.instances_of("b") == ["p1", "d0"]


@pytest.mark.unit
def test_the_controller_takes_the_tightest_over_routers_and_lets_silent_ones_lapse() -> None:
    reports = ServedReports(ttl_s=10.0)
    assert reports.law_target("d0", CLUSTER, now_s=0.0) == CLUSTER  # nothing said: cluster
    assert reports.report("r1", "d0", Served(own_slo=LOOSE), now_s=0.0)
    assert not reports.report("r1", "d0", Served(own_slo=LOOSE), now_s=5.0)  # no change
    assert reports.law_target("d0", CLUSTER, now_s=5.0) == LOOSE
    assert reports.report("r2", "d0", Served(own_slo=TIGHT), now_s=6.0)
    assert reports.law_target("d0", CLUSTER, now_s=6.0) == TIGHT
    assert reports.report("r2", "d0", NOTHING_SERVED, now_s=7.0)  # r2's requests ended
    assert reports.law_target("d0", CLUSTER, now_s=7.0) == LOOSE
    assert reports.law_target("d0", CLUSTER, now_s=14.9) == LOOSE
    assert reports.law_target("d0", CLUSTER, now_s=15.1) == CLUSTER  # r1 went silent
    reports.report("r1", "d0", Served(own_slo=LOOSE), now_s=20.0)
    reports.forget("d0")
    assert reports.law_target("d0", CLUSTER, now_s=20.0) == CLUSTER


# ---- the router's books ------------------------------------------------------------------------


def state(instance_id: str) -> InstanceState:
    phase = Phase.PREFILL if instance_id.startswith("p") else Phase.DECODE
    return InstanceState(instance_id, phase, "a100-80g", 1410, observed_at_s=100.0)


def live_cluster(changes: list[list[str]]) -> LiveCluster:
    cluster = LiveCluster(cluster_slo=CLUSTER, on_serving_change=lambda ids: changes.append([*ids]))
    snapshot = ClusterSnapshot(100.0, {"p0": state("p0")}, {"d0": state("d0"), "d1": state("d1")})
    infos = {
        i: InstanceInfo(i, state(i).phase, "a100-80g", engine_url=f"http://{i}")
        for i in ("p0", "d0", "d1")
    }
    cluster.update(snapshot, infos)
    return cluster


@pytest.mark.unit
def test_a_router_without_classes_says_nothing_of_them() -> None:
    changes: list[list[str]] = []
    cluster = live_cluster(changes)
    cluster.record_placement("a", Placement("p0", "d0"), _spec())
    assert cluster.served_of("d0") is None and cluster.routable().serving == {}
    cluster.finished("a")
    assert changes == []


@pytest.mark.unit
def test_the_router_counts_a_class_on_prefill_to_first_token_and_on_decode_to_the_end() -> None:
    changes: list[list[str]] = []
    cluster = live_cluster(changes)
    cluster.record_placement("loose", Placement("p0", "d1"), _spec(), own_slo=LOOSE)
    assert changes == [["p0", "d1"]]
    assert cluster.served_of("d1") == Served(own_slo=LOOSE)
    assert cluster.routable().serving == {"p0": LOOSE, "d1": LOOSE}
    cluster.record_placement("plain", Placement("p0", "d0"), _spec())  # cluster SLO
    assert changes[1:] == [["p0", "d0"]]
    assert cluster.served_of("p0") == Served(cluster_slo=True, own_slo=LOOSE)
    cluster.reached("loose", "p0")  # dispatched to prefill: still its prompt there
    assert len(changes) == 2
    cluster.reached("loose", "d1")  # first token: the prefill instance is done with it
    assert changes[2:] == [["p0"]] and cluster.served_of("p0") == Served(cluster_slo=True)
    cluster.cluster_slo = TIGHT  # telemetry's cluster SLO moved: the view follows it
    assert cluster.routable().serving == {"p0": TIGHT, "d0": TIGHT, "d1": LOOSE}
    cluster.finished("loose")
    assert changes[3:] == [["d1"]] and cluster.served_of("d1") == NOTHING_SERVED
    cluster.finished("plain")
    assert changes[4:] == [["p0", "d0"]] and cluster.serving_now() == []


def _spec() -> RequestSpec:
    return RequestSpec(input_tokens=128, max_output_tokens=16, arrival_s=100.0)


# ---- notices on the wire -----------------------------------------------------------------------


class RecordingController(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(self) -> None:
        self.notices: list[controller_pb2.NotifyPlacementRequest] = []

    async def NotifyPlacement(
        self, request: controller_pb2.NotifyPlacementRequest, context: Any
    ) -> controller_pb2.NotifyPlacementResponse:
        self.notices.append(request)
        return controller_pb2.NotifyPlacementResponse()


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[RecordingController, str]]:
    server = grpc.aio.server()
    fake = RecordingController()
    controller_pb2_grpc.add_ControllerServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


def serving_of(notice: controller_pb2.NotifyPlacementRequest) -> dict[str, Served]:
    return {
        entry.instance_id: Served(
            entry.cluster_slo, slo_from_proto(entry.own_slo) if entry.HasField("own_slo") else None
        )
        for entry in notice.serving
    }


@pytest.mark.integration
async def test_notices_carry_what_each_instance_serves_and_repeat_it_before_it_lapses(
    recorder: tuple[RecordingController, str],
) -> None:
    fake, address = recorder
    served: dict[str, Served] = {"p0": Served(own_slo=LOOSE), "d0": Served(own_slo=LOOSE)}
    trigger = ControllerTrigger(
        address,
        timeout_s=5.0,
        security=SECURITY,
        view_of=state,
        router_id="router-a",
        served_of=lambda i: served.get(i, NOTHING_SERVED),
        serving_now=lambda: [i for i, s in served.items() if not s.empty],
        refresh_s=0.3,
    )
    trigger.start()
    try:
        trigger.notify(["p0", "d0"])
        await until(lambda: len(fake.notices) == 1)
        first = fake.notices[0]
        assert [s.instance_id for s in first.instances] == ["p0", "d0"]
        assert first.router_id == "router-a"
        assert serving_of(first) == {"p0": Served(own_slo=LOOSE), "d0": Served(own_slo=LOOSE)}
        # The first token: the prefill instance serves nothing of it; a notice with no state.
        served["p0"] = NOTHING_SERVED
        trigger.serving_changed(["p0"])
        await until(lambda: len(fake.notices) == 2)
        assert not fake.notices[1].instances
        assert serving_of(fake.notices[1]) == {"p0": NOTHING_SERVED}
        # Nothing changes: the serving instances are said again, before the copy lapses.
        await until(lambda: len(fake.notices) == 3, timeout_s=5.0)
        assert serving_of(fake.notices[2]) == {"d0": Served(own_slo=LOOSE)}
    finally:
        await trigger.close()


@pytest.mark.integration
async def test_a_notice_for_more_instances_than_one_may_name_goes_in_several(
    recorder: tuple[RecordingController, str],
) -> None:
    fake, address = recorder
    ids = [f"d{i}" for i in range(MAX_NOTIFIED_INSTANCES + 5)]
    trigger = ControllerTrigger(
        address,
        timeout_s=5.0,
        security=SECURITY,
        view_of=state,
        served_of=lambda i: Served(cluster_slo=True),
    )
    await trigger.notify_and_wait(ids)
    await trigger.close()
    assert [len(n.instances) for n in fake.notices] == [MAX_NOTIFIED_INSTANCES, 5]
    assert [len(n.serving) for n in fake.notices] == [MAX_NOTIFIED_INSTANCES, 5]
    assert trigger.failed == 0


# ---- end to end: the controller's law targets follow a live loose request --------------------


@pytest.mark.e2e
async def test_a_loose_request_relaxes_its_instances_laws_until_it_ends() -> None:
    settings = SimStackSettings(
        prefill=1,
        decode=1,
        policy="voltana",
        slo=CLUSTER,
        speedup=2.0,
        report_interval_ms=50.0,
        sample_interval_ms=100,
        snapshot_interval_ms=50,
        drain_timeout_s=0.5,
    )
    async with SimStack(settings) as stack:
        channel = create_channel(stack.controller_address, security=stack.settings.security)
        controller: Any = controller_pb2_grpc.ControllerServiceStub(channel)

        async def law_itl_ms() -> dict[str, float]:
            status = await controller.GetStatus(controller_pb2.GetStatusRequest())
            return {i.instance_id: i.slo.itl_ms for i in status.instances}

        try:
            async with asyncio.timeout(10.0):
                while len(await law_itl_ms()) < 2:  # the controller has seen both instances
                    await asyncio.sleep(0.05)
            assert set((await law_itl_ms()).values()) == {CLUSTER.itl_ms}
            async with VoltanaClient(stack.router_address, timeout_s=60.0) as client:
                stream = client.generate(
                    "a batch job",
                    max_new_tokens=400,
                    ignore_eos=True,
                    ttft_slo_ms=LOOSE.ttft_ms,
                    itl_slo_ms=LOOSE.itl_ms,
                )
                seen: list[dict[str, float]] = []
                summary = None
                async for event in stream:
                    if isinstance(event, GenerationSummary):
                        summary = event
                    elif len(seen) < 3:
                        seen.append(await law_itl_ms())
                assert summary is not None and summary.completion_tokens == 400
            # While it decoded, its decode instance's law ran against its own (loose) ITL.
            assert all(s["decode-0"] == LOOSE.itl_ms for s in seen), seen
            # Once it ended, the router said so: every law is back at the cluster SLO.
            async with asyncio.timeout(10.0):
                while set((await law_itl_ms()).values()) != {CLUSTER.itl_ms}:
                    await asyncio.sleep(0.05)
        finally:
            await channel.close()
