"""Prometheus metrics: a scrape of every service of the running stack under load, as a
Prometheus server would do it (HTTP GET /metrics, text format parsed by prometheus_client)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from voltana.errors import ConfigError
from voltana.observability.prometheus import MetricsServer, split_host_port
from voltana.sdk import VoltanaClient
from voltana.stack import SimStack, SimStackSettings

REQUESTS = 24
DASHBOARD = Path(__file__).resolve().parent.parent / "docker/grafana/dashboards/voltana.json"


@dataclass
class Scrape:
    samples: list[Sample]
    content_type: str

    def values(self, name: str, **labels: str) -> list[float]:
        return [
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        (value,) = self.values(name, **labels)
        return value

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name}


async def scrape(session: aiohttp.ClientSession, url: str) -> Scrape:
    async with session.get(url) as response:
        assert response.status == 200
        text = await response.text()
        content_type = response.headers["Content-Type"]
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return Scrape(samples, content_type)


@dataclass
class LoadedStack:
    addresses: dict[str, str]
    before: dict[str, Scrape]
    after: dict[str, Scrape]


@pytest.fixture(scope="module")
async def loaded_stack() -> AsyncIterator[LoadedStack]:
    settings = SimStackSettings(
        prefill=1,
        decode=1,
        policy="voltana",
        speedup=10.0,
        metrics_port=0,
        sample_interval_ms=50,
        drain_timeout_s=0.5,
    )
    async with SimStack(settings) as stack, aiohttp.ClientSession() as session:
        addresses = stack.addresses
        urls = {name: url for name, url in addresses.items() if name.endswith(".metrics")}
        before = {name: await scrape(session, url) for name, url in urls.items()}
        async with VoltanaClient(stack.router_address, timeout_s=30.0) as client:

            async def one(n: int) -> None:
                await asyncio.sleep(0.02 * n)
                result = await client.generate(
                    input_ids=list(range(100, 100 + 256 + n)), max_new_tokens=16, stream=False
                )
                assert result.summary.completion_tokens == 16

            await asyncio.gather(*(one(n) for n in range(REQUESTS)))
        await asyncio.sleep(0.3)  # a few more GPU samples and controller ticks
        after = {name: await scrape(session, url) for name, url in urls.items()}
        yield LoadedStack(addresses, before, after)


# The tests share one loaded stack, so they share its event loop.
on_loaded_stack = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.e2e
@on_loaded_stack
async def test_agents_show_each_instances_clock_power_energy_and_lease(
    loaded_stack: LoadedStack,
) -> None:
    for instance_id in ("prefill-0", "decode-0"):
        before = loaded_stack.before[f"{instance_id}.agent.metrics"]
        after = loaded_stack.after[f"{instance_id}.agent.metrics"]
        labels = {"instance_id": instance_id, "gpu": "a100-80g"}
        clock_hz = after.value("voltana_gpu_sm_clock_hertz", **labels)
        assert 210e6 <= clock_hz <= 1410e6
        assert 40.0 < after.value("voltana_gpu_power_watts", **labels) < 500.0
        # A counter (…_total) that grew while the GPU served the load.
        energy_j = after.value("voltana_gpu_energy_joules_total", **labels)
        assert energy_j > before.value("voltana_gpu_energy_joules_total", **labels) > 0
        # The controller holds the clock lease (voltana locks clocks from the start).
        (holder,) = after.label_values("voltana_gpu_clock_lease_info", "holder")
        assert holder.startswith("controller@")


@pytest.mark.e2e
@on_loaded_stack
async def test_router_shows_requests_latency_histograms_slo_and_placements(
    loaded_stack: LoadedStack,
) -> None:
    router = loaded_stack.after["router.metrics"]
    assert router.value("voltana_router_requests_total", protocol="grpc", status="OK") == REQUESTS
    assert router.value("voltana_router_requests_in_flight", protocol="grpc") == 0
    assert router.value("voltana_router_time_to_first_token_seconds_count") == REQUESTS
    buckets = router.values("voltana_router_time_to_first_token_seconds_bucket")
    assert buckets == sorted(buckets) and buckets[-1] == REQUESTS  # cumulative, le="+Inf" last
    assert router.value("voltana_router_inter_token_latency_seconds_count") == REQUESTS * 15
    assert router.value("voltana_router_e2e_request_latency_seconds_count") == REQUESTS
    assert router.value("voltana_router_generation_tokens_total") == REQUESTS * 16
    assert router.value("voltana_router_slo_judged_requests_total") == REQUESTS
    for target in ("ttft", "itl", "joint"):
        assert 0 <= router.value("voltana_router_slo_met_requests_total", target=target) <= REQUESTS
    placements = router.values("voltana_router_placements_total", policy="voltana")
    assert sum(placements) == REQUESTS
    assert router.value("voltana_router_info", policy="voltana", router="voltana") == 1


@pytest.mark.e2e
@on_loaded_stack
async def test_controller_shows_decisions_and_clock_changes_by_reason(
    loaded_stack: LoadedStack,
) -> None:
    controller = loaded_stack.after["controller.metrics"]
    reasons = controller.label_values("voltana_controller_decisions_total", "reason")
    assert reasons and all(reasons)
    changes = controller.values("voltana_controller_clock_changes_total", result="applied")
    assert sum(changes) >= 2  # at least each instance's first lock
    for instance_id in ("prefill-0", "decode-0"):
        target_hz = controller.value(
            "voltana_controller_target_sm_clock_hertz", instance_id=instance_id
        )
        assert 210e6 <= target_hz <= 1410e6
    assert controller.value("voltana_controller_policy_info", phase="decode", policy="voltana") == 1


@pytest.mark.e2e
@on_loaded_stack
async def test_telemetry_shows_store_latency_per_operation(loaded_stack: LoadedStack) -> None:
    telemetry = loaded_stack.after["telemetry.metrics"]
    operations = telemetry.label_values(
        "voltana_telemetry_store_operation_duration_seconds_count", "operation"
    )
    assert {"put_gpu_sample", "put_instance_state", "record_completion"} <= operations
    assert telemetry.value(
        "voltana_telemetry_store_operation_duration_seconds_count",
        store="memory",
        operation="record_completion",
    ) == pytest.approx(REQUESTS, abs=2)  # reported off the request path, may trail a little
    assert not telemetry.values("voltana_telemetry_store_errors_total")


@pytest.mark.e2e
@on_loaded_stack
async def test_every_dashboard_query_reads_metrics_the_services_expose(
    loaded_stack: LoadedStack,
) -> None:
    exposed = {s.name for scrape in loaded_stack.after.values() for s in scrape.samples}
    dashboard = json.loads(DASHBOARD.read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"voltana_[a-z_]+", target["expr"])
    }
    assert len(used) >= 10
    assert used <= exposed, used - exposed


@pytest.mark.integration
async def test_metrics_endpoint_speaks_text_and_openmetrics() -> None:
    registry = CollectorRegistry()
    Counter("voltana_test_things", "Things.", registry=registry).inc(3)
    async with MetricsServer(registry, "127.0.0.1:0") as server, aiohttp.ClientSession() as session:
        text = await scrape(session, server.url)
        assert text.content_type.startswith("text/plain")
        assert text.value("voltana_test_things_total") == 3
        headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
        async with session.get(server.url, headers=headers) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await response.text()).rstrip().endswith("# EOF")


@pytest.mark.unit
def test_metrics_address_is_checked() -> None:
    assert split_host_port("[::1]:9400") == ("::1", 9400)
    assert split_host_port(":0") == ("0.0.0.0", 0)
    for bad in ("9400", "host:port", "host:70000"):
        with pytest.raises(ConfigError):
            split_host_port(bad)
