"""One simulated SGLang engine as its own process (`voltana serve engine`, the compose sim profile).

Optionally registers itself with telemetry (engine URL, bootstrap endpoint, agent address) and
reports its load there, and co-hosts a node agent (sim backend) on the engine's own simulated
GPU, so clocks the controller sets through that agent change the engine's speed and power. A
separate agent process could not do that: it would hold a different simulated GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from voltana.contract.state import Phase
from voltana.engine import ScaledClock, SimEngine, SimEngineSettings, engine_phase
from voltana.errors import ConfigError
from voltana.flags import composed, flag, no_flag
from voltana.flags.common import METRICS, SECURITY
from voltana.flags.values import host_port, non_negative_int, positive_int
from voltana.gpu import SharedSimulatedGpu, SimulatedGpu
from voltana.hardware import get_gpu, get_model
from voltana.lifecycle import AsyncService
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.perf.model import PerformanceModel
from voltana.rpc import RpcSecurity
from voltana.services.agent import AgentService, AgentSettings
from voltana.services.telemetry import GpuRef, InstanceInfo, TelemetryClient
from voltana.stack.registration import InstanceRegistration
from voltana.stack.sinks import TelemetryInstanceSink

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineNodeSettings:
    engine: SimEngineSettings = field(
        default_factory=SimEngineSettings, metadata=composed("SimEngineSettings' flags")
    )
    # Host other containers reach this engine by (compose service name); "" = the engine's own.
    advertise_host: str = field(
        default="",
        metadata=flag("host other services reach this engine by", default_help="the listen host"),
    )
    # Telemetry to register with and report to (host:port); None = standalone engine.
    telemetry_address: str | None = field(
        default=None,
        metadata=flag(
            "register with this telemetry and report load to it",
            name="--telemetry",
            parse=host_port,
            metavar="HOST:PORT",
            default_help="standalone",
        ),
    )
    # Co-hosted node agent on this engine's GPU (host:port); None = no agent.
    agent_listen_address: str | None = field(
        default=None,
        metadata=flag(
            "also serve a node agent (sim backend) on this engine's simulated GPU",
            name="--agent-listen",
            parse=host_port,
            metavar="HOST:PORT",
            default_help="none",
        ),
    )
    # host:port the controller dials for that agent; "" = advertise_host:<agent port>.
    agent_advertise_address: str = field(
        default="",
        metadata=flag(
            "address the controller dials for that agent",
            name="--agent-advertise",
            parse=host_port,
            metavar="HOST:PORT",
            default_help="ADVERTISE_HOST:PORT",
        ),
    )
    # The engine's GPU index (its first, with tensor parallelism: the next tp - 1 follow),
    # or every index of its GPUs.
    gpu_index: int = field(default=0, metadata=flag("GPU index", parse=non_negative_int))
    gpu_indices: tuple[int, ...] = field(default=(), metadata=no_flag())
    # Keep the simulated GPU's state in this directory (voltana.gpu.shared_sim), so a node
    # agent in another process (backend sim-shared) controls it; "" = in this process.
    gpu_state_dir: str = field(
        default="",
        metadata=flag(
            "keep the simulated GPU's state in DIR, shared with a separate `serve agent "
            "--backend sim-shared --sim-state-dir DIR`",
            metavar="DIR",
            default_help="in this process",
        ),
    )
    # host:port of that separate node agent, registered as the instance's agent ("" = none,
    # or the co-hosted one).
    agent_address: str = field(
        default="",
        metadata=flag(
            "a separate node agent that controls this engine's GPU (with --gpu-state-dir)",
            name="--agent",
            parse=host_port,
            metavar="HOST:PORT",
            default_help="none",
        ),
    )
    sample_interval_ms: int = field(
        default=250,
        metadata=flag("GPU sampling period of the co-hosted agent", parse=positive_int),
    )
    # Prometheus /metrics of the co-hosted agent ("host:port"); None = not served. (The
    # engine's own SGLang metrics are on its port, at /metrics.)
    agent_metrics_listen_address: str | None = field(default=None, metadata=METRICS)
    # start() waits this long for telemetry (containers start in any order).
    telemetry_wait_s: float = field(default=60.0, metadata=no_flag())
    # Control-plane token (registering, reporting and the co-hosted agent need it) and TLS.
    security: RpcSecurity = field(default_factory=RpcSecurity, metadata=SECURITY)

    def __post_init__(self) -> None:
        if self.gpu_index < 0 or any(index < 0 for index in self.gpu_indices):
            raise ConfigError(f"GPU indices must be >= 0, got {self.all_gpu_indices}")
        if self.gpu_indices and len(self.gpu_indices) != self.engine.tp:
            raise ConfigError(
                f"a TP{self.engine.tp} engine needs {self.engine.tp} GPU indices, "
                f"got {self.gpu_indices}"
            )
        if len(set(self.all_gpu_indices)) != len(self.all_gpu_indices):
            raise ConfigError(f"GPU indices repeat: {self.gpu_indices}")
        if self.agent_listen_address is not None and self.agent_address:
            raise ConfigError("give a co-hosted agent (agent_listen_address) or a separate one")

    @property
    def all_gpu_indices(self) -> tuple[int, ...]:
        """One GPU per tensor-parallel rank."""
        return self.gpu_indices or tuple(range(self.gpu_index, self.gpu_index + self.engine.tp))


class EngineNode(AsyncService):
    """``await start()`` serves the engine (and agent), then registers; ``stop()`` reverses."""

    def __init__(
        self, settings: EngineNodeSettings, *, perf: PerformanceModel | None = None
    ) -> None:
        """``perf``: the simulated GPU's physics (default: the analytical model of the
        engine's GPU and model; a measured profile or a custom model otherwise)."""
        self.settings = settings
        engine_settings = settings.engine
        self.clock = ScaledClock(engine_settings.speedup)
        if perf is None:
            model = get_model(engine_settings.model_key).with_tensor_parallel(engine_settings.tp)
            perf = AnalyticalPerformanceModel.for_hardware(get_gpu(engine_settings.gpu_key), model)
        self.perf: PerformanceModel = perf
        self.gpus: list[SimulatedGpu] = [self._new_gpu(index) for index in settings.all_gpu_indices]
        self.gpu = self.gpus[0]
        self._client: TelemetryClient | None = None
        self.engine: SimEngine | None = None
        self.agent: AgentService | None = None
        self.registration: InstanceRegistration | None = None

    def _new_gpu(self, index: int) -> SimulatedGpu:
        perf, state_dir = self.perf, self.settings.gpu_state_dir
        if state_dir:
            return SharedSimulatedGpu(
                perf.gpu,
                index,
                state_dir=state_dir,
                now_s=self.clock,
                power_source=perf.idle_power_w,
                publishes_power=True,  # the agent in the other process reads it
            )
        return SimulatedGpu(perf.gpu, index, now_s=self.clock, power_source=perf.idle_power_w)

    @property
    def phase(self) -> Phase:
        # A null-mode (prefill and decode in one) engine is a colocated (unified) instance.
        return engine_phase(self.settings.engine.engine_mode)

    def _advertised_host(self, engine: SimEngine) -> str:
        return self.settings.advertise_host or engine.advertised_host

    def info(self) -> InstanceInfo:
        engine = self.engine
        if engine is None:
            raise ConfigError("the engine is not started")
        host = self._advertised_host(engine)
        url_host = f"[{host}]" if ":" in host else host
        is_prefill = self.phase is Phase.PREFILL
        return InstanceInfo(
            instance_id=engine.instance_id,
            phase=self.phase,
            gpu_key=self.gpu.spec.key,
            engine_url=f"http://{url_host}:{engine.port}",
            bootstrap_host=host if is_prefill else "",
            bootstrap_port=engine.bootstrap_port if is_prefill else 0,
            agent_address=self._agent_address(),
            gpu_index=self.gpu.index,
            kv_tokens_capacity=engine.core.kv_capacity_tokens,
            max_running_requests=engine.settings.max_running_requests,
            gpus=self._gpu_refs(),
        )

    def _gpu_refs(self) -> tuple[GpuRef, ...]:
        address = self._agent_address()
        if not address or len(self.gpus) == 1:
            return ()
        return tuple(GpuRef(address, gpu.index) for gpu in self.gpus)

    def _agent_advertise_address(self) -> str:
        """What the agent calls itself in its samples: the address the registration names."""
        settings = self.settings
        if settings.agent_advertise_address:
            return settings.agent_advertise_address
        port = (settings.agent_listen_address or "").rpartition(":")[2]
        if settings.advertise_host and port not in ("", "0"):
            return f"{settings.advertise_host}:{port}"
        return ""

    def _agent_address(self) -> str:
        if self.agent is None:
            return self.settings.agent_address
        if self.settings.agent_advertise_address:
            return self.settings.agent_advertise_address
        if self.settings.advertise_host:
            return f"{self.settings.advertise_host}:{self.agent.port}"
        return self.agent.address

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        settings = self.settings
        sink = None
        if settings.telemetry_address is not None:
            settings.security.require_credentials("engine")
            self._client = TelemetryClient(settings.telemetry_address, security=settings.security)
            sink = TelemetryInstanceSink(
                self._client, engine_clock=self.clock, speedup=settings.engine.speedup
            )
        engine = SimEngine(
            settings.engine, gpu=self.gpus, perf=self.perf, clock=self.clock, sample_sink=sink
        )
        await engine.start()
        self.engine = engine
        registration: InstanceRegistration | None = None
        if self._client is not None:
            await self._client.wait_until_ready(settings.telemetry_wait_s)
            # First without the agent, so the agent's first samples name a registered instance.
            registration = InstanceRegistration(self._client, self.info)
            await registration.register()
            self.registration = registration
            assert sink is not None
            sink.registration = registration
        if settings.agent_listen_address is not None:
            agent = AgentService(
                AgentSettings(
                    listen_address=settings.agent_listen_address,
                    advertise_address=self._agent_advertise_address(),
                    backend="sim",
                    gpu_indices=tuple(gpu.index for gpu in self.gpus),
                    sim_gpu_key=self.gpu.spec.key,
                    instance_gpu_indices={
                        engine.instance_id: tuple(gpu.index for gpu in self.gpus)
                    },
                    node_name=engine.instance_id,
                    telemetry_address=settings.telemetry_address,
                    sample_interval_ms=settings.sample_interval_ms,
                    metrics_listen_address=settings.agent_metrics_listen_address,
                    security=settings.security,
                ),
                devices=list(self.gpus),
            )
            await agent.start()
            self.agent = agent
            if registration is not None:
                await registration.register()
        if registration is not None:
            registration.start()
            _LOG.info(
                "registered %s with telemetry at %s",
                engine.instance_id,
                settings.telemetry_address,
            )

    async def stop(self) -> None:
        """Unregister (so routers stop sending work), stop the agent, drain the engine."""
        engine = self.engine
        registration, self.registration = self.registration, None
        if registration is not None and engine is not None:
            await registration.stop(unregister=True)
        if self.agent is not None:
            await self.agent.stop()
            self.agent = None
        if engine is not None:
            await engine.stop()
            self.engine = None
        if self._client is not None:
            await self._client.close()
            self._client = None
