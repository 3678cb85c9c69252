"""Bring a real SGLang server into Voltana: register it with telemetry and report its load.

SGLang does not talk to telemetry, so one reporter per server (`voltana serve instance`, one
container per SGLang container in compose) registers the instance (engine URL, KV bootstrap
endpoint, node agent and GPU) and turns its Prometheus ``/metrics`` into load reports.

What SGLang's metrics give, and what is estimated:
- queue length, running requests and KV tokens in use are read directly;
- KV capacity and the batch limit come from ``/get_server_info`` (the capacity also from the
  ``sglang:max_total_num_tokens`` gauge when the server info lacks it);
- SGLang 0.5 labels its series (engine_type, tp_rank, is_streaming ...): ``metrics_by_name``
  folds them into one value per family, so the names below are read alike from real SGLang
  and from the simulated engine;
- recent TTFT/ITL follow the observation contract: the per-bucket increments of SGLang's
  histograms go into the same sliding window as the simulator's samples (p90 TTFT, mean ITL);
- a prefill server's running prompt tokens are estimated as running requests x the mean prompt
  length of recent requests (SGLang exposes no gauge of them), and so are its queued tokens;
- the oldest queued request's wait is not exposed (SGLang has only a queue-time histogram):
  ``oldest_wait_ms`` stays 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from voltana.contract.state import InstanceState, Phase
from voltana.deploy.ports import TELEMETRY_PORT
from voltana.engine import SglangHttpClient
from voltana.engine.errors import EngineError
from voltana.engine.protocol import DEFAULT_BOOTSTRAP_PORT
from voltana.errors import ConfigError, UnavailableError, VoltanaError
from voltana.flags import composed, flag
from voltana.flags.common import GPU, SECURITY
from voltana.flags.values import host_port, port_number, positive_float, positive_int
from voltana.hardware import get_gpu
from voltana.lifecycle import cancel_and_wait
from voltana.observation import DEFAULT_OBSERVATION, EngineGauges, LatencyWindow
from voltana.rpc import RpcSecurity, create_channel, error_from_rpc
from voltana.services.telemetry import GpuRef, InstanceInfo, TelemetryClient
from voltana.stack.registration import InstanceRegistration
from voltana.v1 import agent_pb2, agent_pb2_grpc

_LOG = logging.getLogger(__name__)
DEFAULT_PROMPT_TOKENS = 1024
# The SGLang metric families this reporter reads (keys of ``metrics_by_name``). A server that
# lacks one (renamed in a new release) reports zeros there: the real-engine tier and the
# recorded scrape (tests/fixtures/sglang-*) check that SGLang exposes each.
GAUGES_READ = ("sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:num_used_tokens")
COUNTERS_READ = (
    "sglang:num_requests_total",
    "sglang:prompt_tokens_total",
    "sglang:generation_tokens_total",
)
TTFT_HISTOGRAM = "sglang:time_to_first_token_seconds"
ITL_HISTOGRAM = "sglang:inter_token_latency_seconds"
# The KV pool's size when /get_server_info does not say (SGLang 0.5 exposes it as a gauge).
KV_CAPACITY_GAUGE = "sglang:max_total_num_tokens"


def missing_families(metrics: Mapping[str, float]) -> list[str]:
    """The families this reporter reads that ``metrics`` lacks (histograms by their _count).

    SGLang creates its request counters and histograms on the first request: check a scrape
    taken after some traffic (the ITL histogram needs a streamed request of 2+ tokens).
    """
    wanted = [*GAUGES_READ, *COUNTERS_READ, f"{TTFT_HISTOGRAM}_count", f"{ITL_HISTOGRAM}_count"]
    return [name for name in wanted if name not in metrics]


# While the node agent cannot say what GPU this is, ask again this often (wall seconds).
_GPU_KEY_RETRY_S = 5.0


# Its GPUs: --agent and --gpu-index N|HOST:PORT/N (serve instance).
GPUS = composed("--agent, --gpu-index (serve instance)")


@dataclass(frozen=True)
class SglangInstanceSettings:
    telemetry_address: str = field(
        metadata=flag(
            "telemetry service to register with and report to",
            name="--telemetry",
            parse=host_port,
            metavar="HOST:PORT",
            default=f"127.0.0.1:{TELEMETRY_PORT}",
        )
    )
    instance_id: str = field(metadata=flag("id of the instance in telemetry", required=True))
    phase: Phase = field(
        metadata=flag(
            "its --disaggregation-mode",
            name="--mode",
            choices=tuple(phase.value for phase in Phase),
            convert=Phase,
            required=True,
        )
    )
    # Where this reporter reads the server, and where the router should send requests (the
    # same unless the reporter reaches it by another name).
    engine_url: str = field(
        metadata=flag(
            "the SGLang server, e.g. http://sglang-prefill:30000", metavar="URL", required=True
        )
    )
    advertised_engine_url: str = field(
        default="",
        metadata=flag(
            "URL the router should use",
            name="--advertise-engine-url",
            metavar="URL",
            default_help="--engine-url",
        ),
    )
    # Catalog key of its GPU; "" = what its node agent detected (ListGpus), so the GPU type has
    # one source of truth, the agent.
    gpu_key: str = field(default="", metadata=flag(GPU, default_help="what its node agent detects"))
    bootstrap_host: str = field(
        default="", metadata=flag("prefill: host of its KV bootstrap server")
    )
    bootstrap_port: int = field(
        default=0,
        metadata=flag(
            "prefill: its --disaggregation-bootstrap-port (SGLang's default: "
            f"{DEFAULT_BOOTSTRAP_PORT})",
            parse=port_number,
            default_help="none; a prefill instance needs it",
        ),
    )
    agent_address: str = field(default="", metadata=GPUS)
    gpu_index: int = field(default=0, metadata=GPUS)
    # Every GPU of a tensor-parallel server (first = agent_address/gpu_index), on one node
    # agent or several; empty = the one GPU above.
    gpus: tuple[GpuRef, ...] = field(default=(), metadata=GPUS)
    # A file holding the server's GPU UUIDs, comma-separated (its container's
    # NVIDIA_VISIBLE_DEVICES, on Kubernetes): they replace gpu_index/gpus, as the agent numbers
    # them.
    gpu_uuids_file: str = field(
        default="",
        metadata=flag(
            "file with the server's GPU UUIDs, comma-separated (its NVIDIA_VISIBLE_DEVICES); "
            "replaces --gpu-index: the agent says which GPUs those are",
            metavar="PATH",
        ),
    )
    interval_ms: int = field(default=250, metadata=flag("scrape period", parse=positive_int))
    # start() waits this long for the server's /health (model loading takes minutes) and for
    # telemetry.
    startup_timeout_s: float = field(
        default=1800.0,
        metadata=flag("wait this long for the server to become healthy", parse=positive_float),
    )
    # Control-plane token (registering and reporting need it) and TLS.
    security: RpcSecurity = field(default_factory=RpcSecurity, metadata=SECURITY)

    def __post_init__(self) -> None:
        if not self.instance_id:
            raise ConfigError("instance_id must not be empty")
        if not self.engine_url.startswith(("http://", "https://")):
            raise ConfigError(f"engine_url must be an http(s) URL, got {self.engine_url!r}")
        if self.interval_ms < 1:
            raise ConfigError(f"interval_ms must be >= 1, got {self.interval_ms}")
        if self.phase is Phase.PREFILL and not self.bootstrap_port:
            raise ConfigError("a prefill instance needs its KV bootstrap port")
        if self.gpu_key:
            get_gpu(self.gpu_key)
        if self.gpus and self.gpus[0] != (self.agent_address, self.gpu_index):
            raise ConfigError("the first of gpus must be agent_address/gpu_index")
        if self.gpu_uuids_file and not self.agent_address:
            raise ConfigError("finding GPUs by UUID needs the node agent's address")


class _Increments:
    """Increase of cumulative counters between two scrapes."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def delta(self, metrics: Mapping[str, float], name: str) -> float:
        value = metrics.get(name)
        if value is None:
            return 0.0
        previous = self._last.get(name)
        self._last[name] = value
        # First scrape, or a counter reset (server restart): no increment known.
        return 0.0 if previous is None or value < previous else value - previous


class _HistogramWindow:
    """One SGLang histogram, scrape after scrape, as the observation contract's latency window:
    the per-bucket increments since the last scrape go into a LatencyWindow with the server's
    own bucket bounds (read from the scrape)."""

    def __init__(self, name: str, window_s: float) -> None:
        self._name = name
        self._window_s = window_s
        self._bounds_s: tuple[float, ...] = ()
        self._last: tuple[list[float], float, float] | None = None  # cumulative, sum, count
        self.window: LatencyWindow | None = None

    def _read(self, metrics: Mapping[str, float]) -> tuple[tuple[float, ...], list[float]]:
        prefix = f'{self._name}_bucket{{le="'
        buckets = []
        for key, value in metrics.items():
            if key.startswith(prefix) and key.endswith('"}'):
                bound = float(key[len(prefix) : -2])
                buckets.append((bound, value))
        buckets.sort()
        finite = tuple(bound for bound, _ in buckets if math.isfinite(bound))
        return finite, [value for _, value in buckets]

    def update(self, now_s: float, metrics: Mapping[str, float]) -> None:
        bounds, cumulative = self._read(metrics)
        total_s = metrics.get(f"{self._name}_sum")
        count = metrics.get(f"{self._name}_count")
        if not bounds or total_s is None or count is None:
            return
        if bounds != self._bounds_s or self.window is None:
            self._bounds_s = bounds
            self.window = LatencyWindow(bounds, self._window_s)
            self._last = None
        last, self._last = self._last, (cumulative, total_s, count)
        # First scrape, or a counter reset (server restart): no increment known.
        if last is None or count < last[2]:
            return
        per_bucket = [
            (now - before) - (now_prev - before_prev)
            for now, before, now_prev, before_prev in zip(
                cumulative, [0.0, *cumulative[:-1]], last[0], [0.0, *last[0][:-1]], strict=True
            )
        ]
        self.window.add_increments(now_s, per_bucket, total_s - last[1], count - last[2])


class SglangInstanceReporter:
    """``await start()`` waits for the server, registers it and starts reporting."""

    def __init__(
        self,
        settings: SglangInstanceSettings,
        *,
        clock: Callable[[], float] = time.time,
        engine: SglangHttpClient | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._engine = engine or SglangHttpClient()
        self._owns_engine = engine is None
        self._telemetry: TelemetryClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._increments = _Increments()
        window_s = DEFAULT_OBSERVATION.window_s
        self._ttft = _HistogramWindow(TTFT_HISTOGRAM, window_s)
        self._itl = _HistogramWindow(ITL_HISTOGRAM, window_s)
        self._kv_capacity_tokens = 0
        self._max_running_requests = 0
        self._mean_prompt_tokens = float(DEFAULT_PROMPT_TOKENS)
        self._last_activity_s = 0.0
        self.gpu_key = settings.gpu_key
        # The server's GPUs: from the settings, or found by UUID on the agent (gpu_uuids_file).
        self.gpu_index = settings.gpu_index
        self.gpus = settings.gpus
        self._gpu_key_known = (
            bool(settings.gpu_key) and not settings.gpu_uuids_file
        ) or not settings.agent_address
        self._gpu_key_warned = False
        self.registration: InstanceRegistration | None = None
        self.reports = 0

    def info(self) -> InstanceInfo:
        settings = self.settings
        return InstanceInfo(
            instance_id=settings.instance_id,
            phase=settings.phase,
            gpu_key=self.gpu_key,
            engine_url=settings.advertised_engine_url or settings.engine_url,
            bootstrap_host=settings.bootstrap_host,
            bootstrap_port=settings.bootstrap_port,
            agent_address=settings.agent_address,
            gpu_index=self.gpu_index,
            kv_tokens_capacity=self._kv_capacity_tokens,
            max_running_requests=self._max_running_requests,
            gpus=self.gpus,
        )

    async def _try_detect_gpu_key(self) -> bool:
        """Ask the agent for the GPU type (True once known); an agent not up yet is asked
        again while reporting, and the registration then follows."""
        try:
            self.gpu_key = await self._detect_gpu_key()
        except VoltanaError as error:
            if not self._gpu_key_warned:
                _LOG.warning(
                    "cannot ask the node agent at %s for the GPU type yet (%s); will retry",
                    self.settings.agent_address,
                    error,
                )
                self._gpu_key_warned = True
            return False
        self._gpu_key_known = True
        return True

    async def _detect_gpu_key(self) -> str:
        """The catalog key the node agent reports for this server's (first) GPU; with
        ``gpu_uuids_file``, its GPUs are first found on the agent by their UUIDs."""
        settings = self.settings
        if settings.gpu_key and not settings.gpu_uuids_file:
            return settings.gpu_key
        if not settings.agent_address:
            return settings.gpu_key
        channel = create_channel(settings.agent_address, security=settings.security)
        try:
            stub = agent_pb2_grpc.NodeAgentServiceStub(channel)
            listing = await stub.ListGpus(agent_pb2.ListGpusRequest(), timeout=10.0)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        finally:
            await channel.close()
        if settings.gpu_uuids_file:
            self._resolve_uuids(list(listing.gpus))
        for gpu in listing.gpus:
            if gpu.gpu_index == self.gpu_index:
                if not gpu.gpu_key:
                    _LOG.warning(
                        "the node agent does not know GPU %d (%s) from the catalog; policies "
                        "use the controller's and router's configured GPU (or their --profile)",
                        gpu.gpu_index,
                        gpu.name,
                    )
                return settings.gpu_key or gpu.gpu_key
        raise ConfigError(
            f"the node agent at {settings.agent_address} controls no GPU {self.gpu_index}"
        )

    async def _until_gpus_known(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.startup_timeout_s
        while not await self._try_detect_gpu_key():
            if loop.time() > deadline:
                raise UnavailableError(
                    f"could not find this server's GPUs on the node agent at "
                    f"{self.settings.agent_address} within {self.settings.startup_timeout_s:g} s"
                )
            await asyncio.sleep(2.0)

    def _resolve_uuids(self, gpus: list[agent_pb2.GpuInfo]) -> None:
        """This server's GPUs by the UUIDs its container was given (NVIDIA_VISIBLE_DEVICES,
        as a device plugin hands them out), as the agent numbers them."""
        path = self.settings.gpu_uuids_file
        try:
            text = Path(path).read_text().strip()
        except OSError as error:
            raise UnavailableError(f"cannot read the GPU UUIDs from {path}: {error}") from None
        uuids = [uuid.strip() for uuid in text.replace("\n", ",").split(",") if uuid.strip()]
        by_uuid = {gpu.uuid: gpu.gpu_index for gpu in gpus}
        missing = [uuid for uuid in uuids if uuid not in by_uuid]
        if not uuids or missing:
            raise ConfigError(
                f"GPU UUIDs {missing or text!r} from {path} are not GPUs of the node agent at "
                f"{self.settings.agent_address}"
            )
        indices = [by_uuid[uuid] for uuid in uuids]
        address = self.settings.agent_address
        self.gpu_index = indices[0]
        self.gpus = tuple(GpuRef(address, index) for index in indices) if len(indices) > 1 else ()

    async def start(self) -> None:
        settings = self.settings
        settings.security.require_credentials("instance reporter")
        await self._wait_for_server()
        server_info = await self._engine.server_info(settings.engine_url)
        self._kv_capacity_tokens = int(server_info.get("max_total_num_tokens") or 0)
        self._max_running_requests = int(server_info.get("max_running_requests") or 0)
        if settings.gpu_uuids_file:
            # Which GPUs the server has is only known through the agent: wait for it.
            await self._until_gpus_known()
        else:
            await self._try_detect_gpu_key()
        self._telemetry = TelemetryClient(settings.telemetry_address, security=settings.security)
        await self._telemetry.wait_until_ready(settings.startup_timeout_s)
        self.registration = InstanceRegistration(self._telemetry, self.info)
        await self.registration.register()
        self.registration.start()
        self._last_activity_s = self._clock()
        self._task = asyncio.create_task(
            self._run(), name=f"sglang-reporter-{settings.instance_id}"
        )
        _LOG.info(
            "reporting %s %s (%s) to telemetry at %s",
            settings.phase.value,
            settings.instance_id,
            settings.engine_url,
            settings.telemetry_address,
        )

    async def _wait_for_server(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.startup_timeout_s
        waiting_logged = False
        while not await self._engine.health(self.settings.engine_url):
            if loop.time() > deadline:
                raise UnavailableError(
                    f"SGLang at {self.settings.engine_url} not healthy after "
                    f"{self.settings.startup_timeout_s:g} s"
                )
            if not waiting_logged:
                _LOG.info("waiting for SGLang at %s to become healthy", self.settings.engine_url)
                waiting_logged = True
            await asyncio.sleep(1.0)

    def state_from_metrics(self, metrics: Mapping[str, float]) -> InstanceState:
        """One load report from one scrape (updates the counters' baselines)."""
        settings = self.settings
        now_s = self._clock()
        increments = self._increments
        if not self._kv_capacity_tokens and metrics.get(KV_CAPACITY_GAUGE):
            self._kv_capacity_tokens = int(metrics[KV_CAPACITY_GAUGE])
        queue_len = int(metrics.get("sglang:num_queue_reqs", 0))
        running = int(metrics.get("sglang:num_running_reqs", 0))
        finished = increments.delta(metrics, "sglang:num_requests_total")
        prompt_tokens = increments.delta(metrics, "sglang:prompt_tokens_total")
        generated = increments.delta(metrics, "sglang:generation_tokens_total")
        if finished > 0 and prompt_tokens > 0:
            # Smoothed, so one odd request does not swing the estimate.
            self._mean_prompt_tokens += 0.2 * (prompt_tokens / finished - self._mean_prompt_tokens)
        if queue_len or running or finished or generated:
            self._last_activity_s = now_s
        is_prefill = settings.phase is Phase.PREFILL
        # A colocated server's queue holds prompts too; its running requests are its batch.
        prompts_wait = is_prefill or settings.phase is Phase.UNIFIED
        gauges = EngineGauges(
            queue_len=queue_len,
            queued_tokens=int(queue_len * self._mean_prompt_tokens) if prompts_wait else 0,
            running_prefill_tokens=int(running * self._mean_prompt_tokens) if is_prefill else 0,
            running_batch=0 if is_prefill else running,
            kv_tokens_used=int(metrics.get("sglang:num_used_tokens", 0)),
            kv_tokens_capacity=self._kv_capacity_tokens,
            max_running_requests=self._max_running_requests,
        )
        self._ttft.update(now_s, metrics)
        self._itl.update(now_s, metrics)
        quantile = DEFAULT_OBSERVATION.ttft_quantile
        state = InstanceState(
            instance_id=settings.instance_id,
            phase=settings.phase,
            gpu_key=self.gpu_key,
            sm_clock_mhz=0,  # clocks come from the node agent's GPU samples
            **dataclasses.asdict(gauges),
            recent_ttft_ms=self._ttft.window.quantile_ms(now_s, quantile)
            if self._ttft.window is not None
            else None,
            recent_itl_ms=self._itl.window.mean_ms(now_s) if self._itl.window is not None else None,
            observed_at_s=now_s,
            last_activity_s=self._last_activity_s,
        )
        return state

    async def report_once(self) -> None:
        """Scrape the server and report its load (the instance's heartbeat: a server that
        cannot be scraped sends none and expires in telemetry)."""
        assert self._telemetry is not None
        metrics = await self._engine.metrics(self.settings.engine_url)
        result = await self._telemetry.report_instance_samples([self.state_from_metrics(metrics)])
        if self.registration is not None:
            self.registration.note_report(result.unknown_instance_ids)
        if result.rejected and not result.unknown_instance_ids:
            _LOG.warning("telemetry rejected a report: %s", result.first_rejection_reason)
        self.reports += 1

    async def _run(self) -> None:
        interval_s = self.settings.interval_ms / 1000.0
        failing = False
        asked_s = time.monotonic()
        while True:
            if not self._gpu_key_known and time.monotonic() - asked_s >= _GPU_KEY_RETRY_S:
                asked_s = time.monotonic()
                if await self._try_detect_gpu_key() and self.registration is not None:
                    await self.registration.register()  # now with the agent's GPU type
            try:
                await self.report_once()
                if failing:
                    _LOG.info("reporting %s works again", self.settings.instance_id)
                failing = False
            except (EngineError, VoltanaError) as error:
                if not failing:
                    _LOG.warning("cannot report %s: %s", self.settings.instance_id, error)
                failing = True
            await asyncio.sleep(interval_s)

    async def stop(self) -> None:
        """Stop reporting and unregister the instance (routers stop sending it work)."""
        task, self._task = self._task, None
        await cancel_and_wait([task])
        if self._telemetry is not None:
            registration, self.registration = self.registration, None
            if registration is not None:
                await registration.stop(unregister=True)
            await self._telemetry.close()
            self._telemetry = None
        if self._owns_engine:
            await self._engine.close()
