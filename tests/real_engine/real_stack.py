"""Voltana's live stack in process around real SGLang servers (unified mode, on CPU).

Telemetry on a real Redis, the controller (policy voltana), per server a node agent on a
simulated GPU (sim backend: SGLang itself runs on the CPU) and the reporter of
``voltana serve instance --mode unified``, and the router with its gRPC and HTTP doors: what a
deployment runs, with the same services ``voltana up`` wires, only the engines are real.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from voltana.contract.state import Phase, SloTarget
from voltana.lifecycle import AsyncService
from voltana.rpc import RpcSecurity
from voltana.services.agent import AgentService, AgentSettings
from voltana.services.controller import ControllerService, ControllerSettings
from voltana.services.router import RouterService, RouterSettings
from voltana.services.telemetry import TelemetryClient, TelemetryService, TelemetrySettings
from voltana.stack.sglang_reporter import SglangInstanceReporter, SglangInstanceSettings

_LOG = logging.getLogger(__name__)
STACK_TOKEN = "real-engine-control-plane-token-0123456789"
SECURITY = RpcSecurity(token=STACK_TOKEN)
GPU_KEY = "a100-80g"
# Loose targets: the tiny model on a shared 2-core CPU is slow, and the point is the plumbing.
SLO = SloTarget(ttft_ms=5000.0, itl_ms=500.0)


@dataclass
class RealStack(AsyncService):
    """``await start()``: every service up and the router seeing every server with a clock."""

    engine_urls: Sequence[str]
    redis_url: str
    served_model_name: str
    policy: str = "voltana"
    # Fast probes: a killed server is ejected within about a second.
    health_check_interval_s: float = 0.25
    report_interval_ms: int = 200
    # The served model's vocabulary (the router refuses token ids outside it; 0 = unchecked).
    vocab_size: int = 0
    telemetry: TelemetryService | None = None
    controller: ControllerService | None = None
    router: RouterService | None = None
    agents: list[AgentService] = field(default_factory=list)
    reporters: list[SglangInstanceReporter] = field(default_factory=list)
    client: TelemetryClient | None = None

    @staticmethod
    def instance_id(index: int) -> str:
        return f"unified-{index}"

    @property
    def instance_ids(self) -> list[str]:
        return [self.instance_id(index) for index in range(len(self.engine_urls))]

    @property
    def router_address(self) -> str:
        assert self.router is not None
        return self.router.address

    @property
    def http_url(self) -> str:
        assert self.router is not None and self.router.http_url is not None
        return self.router.http_url

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self.telemetry = TelemetryService(
            TelemetrySettings(redis_url=self.redis_url, slo=SLO, security=SECURITY)
        )
        await self.telemetry.start()
        self.client = TelemetryClient(self.telemetry.address, security=SECURITY)
        for index, url in enumerate(self.engine_urls):
            instance_id = self.instance_id(index)
            agent = AgentService(
                AgentSettings(
                    backend="sim",
                    sim_gpu_key=GPU_KEY,
                    gpu_indices=(index,),
                    instance_gpu_indices={instance_id: index},
                    node_name=instance_id,
                    telemetry_address=self.telemetry.address,
                    sample_interval_ms=100,
                    security=SECURITY,
                )
            )
            await agent.start()
            self.agents.append(agent)
            reporter = SglangInstanceReporter(
                SglangInstanceSettings(
                    telemetry_address=self.telemetry.address,
                    instance_id=instance_id,
                    phase=Phase.UNIFIED,
                    engine_url=url,
                    agent_address=agent.advertised_address,
                    gpu_index=index,
                    interval_ms=self.report_interval_ms,
                    startup_timeout_s=60.0,
                    security=SECURITY,
                )
            )
            await reporter.start()
            self.reporters.append(reporter)
        self.controller = ControllerService(
            ControllerSettings(
                telemetry_address=self.telemetry.address,
                policy=self.policy,
                slo=SLO,
                gpu_key=GPU_KEY,
                control_interval_ms=200,
                security=SECURITY,
            )
        )
        await self.controller.start()
        self.router = RouterService(
            RouterSettings(
                telemetry_address=self.telemetry.address,
                controller_address=self.controller.address,
                router_id="router-real",
                policy=self.policy,
                gpu_key=GPU_KEY,
                slo=SLO,
                http_listen_address="127.0.0.1:0",
                served_model_name=self.served_model_name,
                health_check_interval_s=self.health_check_interval_s,
                vocab_size=self.vocab_size,
                snapshot_interval_ms=100,
                security=SECURITY,
            )
        )
        await self.router.start()
        await self.until_routable()

    async def until_routable(self, timeout_s: float = 60.0) -> None:
        """Until the router's snapshot lists every server with its GPU's clock, and has seen
        each GPU's energy counter move (the router estimates a request's energy from those
        readings: a request finishing before there are two has none)."""
        assert self.router is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        readings_j: dict[str, set[float]] = {i: set() for i in self.instance_ids}
        while True:
            snapshot = self.router.cluster.latest
            states = [snapshot.instance(i) if snapshot else None for i in self.instance_ids]
            for state in states:
                if state is not None and state.energy_j > 0:
                    readings_j[state.instance_id].add(state.energy_j)
            if all(state is not None and state.sm_clock_mhz > 0 for state in states) and all(
                len(seen) >= 3 for seen in readings_j.values()
            ):
                return
            if loop.time() > deadline:
                raise TimeoutError(f"the router does not see every server: {states}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        parts: list[AsyncService | TelemetryClient | None] = [
            self.router,
            self.controller,
            # Agents first: their GPU samples of an unregistered instance would be refused.
            *reversed(self.agents),
            *reversed(self.reporters),
            self.client,
            self.telemetry,
        ]
        for part in parts:
            if part is None:
                continue
            try:
                if isinstance(part, TelemetryClient):
                    await part.close()
                else:
                    await part.stop()
            except Exception:
                _LOG.exception("stopping %r failed", part)
        self.router = self.controller = self.telemetry = self.client = None
        self.agents, self.reporters = [], []
