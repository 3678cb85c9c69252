"""A simulated SGLang engine: SGLang's HTTP protocol over a performance model and a GPU device.

One ``SimEngine`` is one SGLang server (``--disaggregation-mode prefill|decode|null``). Batching
is ``voltana.batching.scheduling`` (shared with the offline simulator), iteration latency and power
come from a ``PerformanceModel`` at the GPU's current SM clock (so a node agent moving the clock
of the ``SimulatedGpu`` changes the engine's speed), and the GPU's power draw follows the work.

What is simulated, and how it differs from SGLang:

- Tokens: ``ToyTokenizer`` (about 4 characters per token; outputs are deterministic
  pseudo-words). Generation runs to ``max_new_tokens`` (finish reason ``length``; 0 runs the
  prefill only) unless a ``stop`` string or one of ``stop_token_ids`` ends it first (finish
  reason ``{"type": "stop", "matched": ...}``, as SGLang's; ``voltana.engine.stopping``);
  ``temperature``, ``seed``, penalties ... are accepted and ignored (the tokens are fixed);
  ``return_logprob`` gives made-up, well-formed logprobs.
- Endpoints: ``/generate``, the OpenAI ``/v1/completions``, ``/v1/chat/completions``,
  ``/v1/models`` and ``/v1/models/{id}`` (PD fields pass through, as SGLang's router sends
  them), ``/model_info``, ``/get_server_info``, ``/get_load``, ``/metrics``, ``/health``, ``/abort_request``.
- PD: the router sends the same request to a prefill and a decode engine with the prefill's
  bootstrap host/port and one room. The prefill engine computes the prompt and the first token,
  then answers its request; the decode engine fetches the KV cache from the prefill's bootstrap
  port (``voltana.engine.kv_handoff``, after KV bytes / ``kv_transfer_gb_s``), emits the first
  token and decodes the rest. A decode request whose KV never comes fails after
  ``kv_wait_timeout_s`` with HTTP 504; one without ``bootstrap_port`` uses the configured
  ``bootstrap_port`` or SGLang's default, 8998.
- Times in responses, /metrics and ``InstanceState`` are simulated seconds (wall x speedup).
- A client that disconnects cancels its request; ``stop()`` lets in-flight requests run for
  ``drain_timeout_s``, then ends the rest with finish reason ``{"type": "abort"}``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from opentelemetry import trace

from voltana.contract.state import InstanceState
from voltana.engine.clock import ScaledClock
from voltana.engine.core import EngineCore, Progress, RequestState
from voltana.engine.errors import EngineError, EngineRequestError
from voltana.engine.http_log import http_server_logger
from voltana.engine.kv_handoff import KvMailbox, build_bootstrap_app, fetch_kv
from voltana.engine.logprobs import LogprobSource
from voltana.engine.openai_api import (
    OpenAiFormatter,
    OpenAiKind,
    model_card,
    model_list,
    openai_error,
    parse_openai_request,
)
from voltana.engine.protocol import (
    DEFAULT_BOOTSTRAP_PORT,
    SSE_DONE,
    FinishReason,
    error_body,
    meta_info,
    parse_generate_request,
    sse_event,
)
from voltana.engine.reporter import InstanceSampleSink, report_periodically
from voltana.engine.settings import EngineMode, SimEngineSettings
from voltana.engine.stopping import visible_text
from voltana.errors import ConfigError
from voltana.gpu.device import GpuDevice
from voltana.gpu.sim import SimulatedGpu
from voltana.hardware.gpus import get_gpu
from voltana.hardware.models import get_model
from voltana.lifecycle import AsyncService
from voltana.observability.http_tracing import client_trace_configs, server_middlewares
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.perf.model import PerformanceModel

logger = logging.getLogger(__name__)

_SHUTDOWN_MESSAGE = "the engine is shutting down"
# The span of the work a request gets on an engine of each mode.
_STAGE_SPANS = {
    EngineMode.PREFILL: "sglang.prefill",
    EngineMode.DECODE: "sglang.decode",
    EngineMode.NULL: "sglang.generate",
}
# The engine_type label of SGLang's metrics for each --disaggregation-mode.
_ENGINE_TYPES = {
    EngineMode.PREFILL: "prefill",
    EngineMode.DECODE: "decode",
    EngineMode.NULL: "unified",
}
# After aborting, how long stop() lets handlers write their last chunk (wall seconds).
_FLUSH_TIMEOUT_S = 1.0
_POLL_S = 0.01


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# Pending connections the kernel queues before accept (uvicorn's default, which SGLang uses);
# Python's default (128) drops the SYNs of a larger burst and clients wait 1 s to retry.
_LISTEN_BACKLOG = 2048


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=_LISTEN_BACKLOG)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None


def _json_error(message: str, status: int) -> web.Response:
    return web.json_response(error_body(message, status), status=status)


class SimEngine(AsyncService):
    """A simulated SGLang server on ``settings.host:port``; see the module docstring.

    ``gpu`` defaults to a ``SimulatedGpu`` of ``settings.gpu_key`` on this engine's clock; pass
    your own to share it with a node agent (give it the same ``clock``, or energy integrates on
    another time base). ``perf`` defaults to the analytical model of the GPU and model.

    Tracing (``tracer_provider``, default the global one): its HTTP servers continue the
    caller's W3C ``traceparent`` (voltana.observability.http_tracing), the decode's
    KV fetch from the prefill is a traced HTTP call, and each request gets a span per stage it
    goes through here: ``sglang.kv_transfer`` (decode), then ``sglang.prefill``,
    ``sglang.decode`` or ``sglang.generate`` (null mode).
    """

    def __init__(
        self,
        settings: SimEngineSettings,
        *,
        gpu: GpuDevice | Sequence[GpuDevice] | None = None,
        perf: PerformanceModel | None = None,
        clock: Callable[[], float] | None = None,
        sample_sink: InstanceSampleSink | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self._tracer_provider = tracer_provider
        self._tracer = trace.get_tracer("voltana.engine", tracer_provider=tracer_provider)
        self.mode = settings.engine_mode
        if perf is None:
            model = get_model(settings.model_key).with_tensor_parallel(settings.tp)
            perf = AnalyticalPerformanceModel.for_hardware(get_gpu(settings.gpu_key), model)
        self.perf = perf
        self.clock: Callable[[], float] = clock or ScaledClock(settings.speedup)
        if gpu is None:  # one simulated GPU per tensor-parallel rank
            gpu = [
                SimulatedGpu(perf.gpu, index, now_s=self.clock, power_source=perf.idle_power_w)
                for index in range(settings.tp)
            ]
        self.gpus: tuple[GpuDevice, ...] = (gpu,) if isinstance(gpu, GpuDevice) else tuple(gpu)
        self.gpu: GpuDevice = self.gpus[0]
        self._mailbox = (
            KvMailbox(settings.kv_wait_timeout_s) if self.mode is EngineMode.PREFILL else None
        )
        self.core = EngineCore(
            mode=self.mode,
            perf=perf,
            gpu=self.gpus,
            clock=self.clock,
            speedup=settings.speedup,
            max_running_requests=settings.max_running_requests,
            chunked_prefill_size=settings.chunked_prefill_size,
            max_prefill_requests=settings.max_prefill_requests,
            kv_capacity_tokens=settings.max_total_num_tokens,
            recent_window_s=settings.recent_window_s,
            tensor_parallel=settings.tp,
            kv_outbox=self._mailbox,
            catch_up_wall_s=settings.catch_up_wall_s,
        )
        self._sample_sink = sample_sink
        self._runner: web.AppRunner | None = None
        self._bootstrap_runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._port: int | None = None
        self._bootstrap_port: int | None = None
        self._accepting = False

    # ---- addresses -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise EngineError("the engine is not started")
        return self._port

    @property
    def advertised_host(self) -> str:
        host = self.settings.host
        return "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host

    @property
    def url(self) -> str:
        return f"http://{_bracket(self.advertised_host)}:{self.port}"

    @property
    def bootstrap_host(self) -> str:
        return self.advertised_host

    @property
    def bootstrap_port(self) -> int:
        """The bound KV bootstrap port (prefill mode); the configured one otherwise."""
        return self._bootstrap_port or self.settings.bootstrap_port

    @property
    def instance_id(self) -> str:
        if self.settings.instance_id:
            return self.settings.instance_id
        port = self._port if self._port is not None else self.settings.port
        return f"{self.mode.value}@{self.advertised_host}:{port}"

    @property
    def is_running(self) -> bool:
        return self._runner is not None

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._runner is not None:
            return
        try:
            await self._start()
        except BaseException:
            await self._shutdown()
            raise
        logger.info("simulated %s engine %s listening on %s", self.mode, self.instance_id, self.url)

    async def _start(self) -> None:
        self.core.start()
        self._runner = web.AppRunner(
            self._build_app(),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=1.0,
            logger=http_server_logger(),
        )
        await self._runner.setup()
        sock = _listen(self.settings.host, self.settings.port)
        self._port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock, backlog=_LISTEN_BACKLOG).start()
        if self._mailbox is not None:
            self._mailbox.reopen()
            bootstrap_app = build_bootstrap_app(
                self._mailbox,
                self._wall_duration_s,
                middlewares=server_middlewares(self._tracer_provider),
            )
            self._bootstrap_runner = web.AppRunner(
                bootstrap_app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
            )
            await self._bootstrap_runner.setup()
            bootstrap_sock = _listen(self.settings.host, self.settings.bootstrap_port)
            self._bootstrap_port = int(bootstrap_sock.getsockname()[1])
            await web.SockSite(
                self._bootstrap_runner, bootstrap_sock, backlog=_LISTEN_BACKLOG
            ).start()
        if self.mode is EngineMode.DECODE:
            # One KV fetch per request in flight: no pool limit to queue them behind.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                trace_configs=client_trace_configs(self._tracer_provider),
            )
        if self._sample_sink is not None:
            self._reporter = asyncio.create_task(
                report_periodically(
                    self.instance_state,
                    self._sample_sink,
                    self.settings.report_interval_ms / 1000.0,
                ),
                name=f"engine-reporter-{self.instance_id}",
            )
        self._accepting = True

    async def stop(self) -> None:
        """Stop accepting, drain for ``drain_timeout_s``, abort the rest, close the ports."""
        if self._runner is None:
            return
        self._accepting = False
        loop = asyncio.get_running_loop()
        drain_deadline = loop.time() + self.settings.drain_timeout_s
        while self.core.live_requests and loop.time() < drain_deadline:
            await asyncio.sleep(_POLL_S)
        aborted = self.core.abort_all(_SHUTDOWN_MESSAGE)
        if aborted:
            logger.info("engine %s aborted %d request(s) on stop", self.instance_id, aborted)
        if self._mailbox is not None:
            self._mailbox.close("the prefill engine is shutting down")
        flush_deadline = loop.time() + _FLUSH_TIMEOUT_S
        while self.core.requests() and loop.time() < flush_deadline:
            await asyncio.sleep(_POLL_S)
        await self._shutdown()
        logger.info("simulated engine %s stopped", self.instance_id)

    async def _shutdown(self) -> None:
        self._accepting = False
        if self._reporter is not None:
            self._reporter.cancel()
            await asyncio.gather(self._reporter, return_exceptions=True)
            self._reporter = None
        for runner in (self._runner, self._bootstrap_runner):
            if runner is not None:
                await runner.cleanup()
        self._runner = self._bootstrap_runner = None
        await self.core.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _wall_duration_s(self, simulated_s: float) -> float:
        return simulated_s / self.settings.speedup

    # ---- observation -----------------------------------------------------------------------
    def instance_state(self) -> InstanceState:
        return self.core.instance_state(self.instance_id)

    def metrics_text(self) -> str:
        core = self.core
        now_s = self.clock()
        used = core.kv_tokens_used
        gauges: dict[str, tuple[str, float]] = {
            "sglang:num_running_reqs": ("The number of running requests.", core.running_requests),
            "sglang:num_queue_reqs": (
                "The number of requests in the waiting queue.",
                core.waiting_requests,
            ),
            "sglang:num_used_tokens": ("The number of used tokens.", used),
            "sglang:token_usage": ("The token usage.", used / max(1, core.kv_capacity_tokens)),
            "sglang:gen_throughput": (
                "The generation throughput (token/s).",
                core.gen_throughput_tps(now_s),
            ),
            "sglang:cache_hit_rate": ("The prefix cache hit rate.", 0.0),
        }
        # PD queues. The simulation neither makes a prefill wait for its decode's handshake nor
        # a transfer wait for decode memory, so both preallocation queues stay empty.
        if self.mode is EngineMode.DECODE:
            gauges["sglang:num_decode_prealloc_queue_reqs"] = (
                "The number of requests in the decode preallocation queue.",
                0,
            )
            gauges["sglang:num_decode_transfer_queue_reqs"] = (
                "The number of requests waiting for their KV cache.",
                core.kv_wait_requests,
            )
        if self._mailbox is not None:
            gauges["sglang:num_prefill_prealloc_queue_reqs"] = (
                "The number of requests in the prefill preallocation (bootstrap) queue.",
                0,
            )
            gauges["sglang:num_prefill_inflight_queue_reqs"] = (
                "The number of prefilled requests whose KV cache awaits its decode instance.",
                len(self._mailbox),
            )
        # SGLang 0.5's labels: engine_type on every family, the scheduler's ranks on its gauges.
        # (Real SGLang also splits its request counters and histograms by is_streaming; the
        # simulated engine keeps one series, which readers that sum the split read alike.)
        labels = {
            "engine_type": _ENGINE_TYPES[self.mode],
            "model_name": self.settings.served_model_path,
        }
        scheduler_labels = {**labels, "moe_ep_rank": "0", "pp_rank": "0", "tp_rank": "0"}
        gauges["sglang:max_total_num_tokens"] = (
            "Maximum total number of tokens in the KV cache pool.",
            core.kv_capacity_tokens,
        )
        return core.metrics.render(labels, gauges, scheduler_labels)

    def server_info(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "model_path": settings.served_model_path,
            "served_model_name": settings.served_model_path,
            "tokenizer_path": settings.served_model_path,
            "host": settings.host,
            "port": self._port,
            "tp_size": settings.tp,
            "dp_size": 1,
            "disaggregation_mode": self.mode.value,
            "disaggregation_bootstrap_port": self.bootstrap_port,
            "disaggregation_transfer_backend": "simulated",
            "max_total_num_tokens": self.core.kv_capacity_tokens,
            "chunked_prefill_size": settings.chunked_prefill_size,
            "max_running_requests": settings.max_running_requests,
            "max_prefill_requests": settings.max_prefill_requests,
            "context_length": self.perf.model.max_context_tokens,
            "incremental_streaming_output": settings.incremental_streaming_output,
            "gpu": {
                "key": self.perf.gpu.key,
                "name": self.gpu.name,
                "count": len(self.gpus),
                "sm_clock_mhz": self.core.sm_clock_mhz,
            },
            "version": "voltana-sim",
            "voltana_sim": {
                "instance_id": self.instance_id,
                "speedup": settings.speedup,
                "gpu_key": self.perf.gpu.key,
                "model_key": self.perf.model.key,
                "bootstrap_host": self.bootstrap_host,
            },
        }

    # ---- HTTP ------------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=server_middlewares(self._tracer_provider))
        app.router.add_post("/generate", self._handle_generate)
        app.router.add_get("/health", self._handle_health)
        app.router.add_get("/health_generate", self._handle_health)
        app.router.add_get("/get_server_info", self._handle_server_info)
        app.router.add_get("/server_info", self._handle_server_info)
        app.router.add_get("/get_model_info", self._handle_model_info)
        app.router.add_get("/model_info", self._handle_model_info)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/v1/models/{model_id:.+}", self._handle_model)
        app.router.add_post("/v1/completions", self._handle_completions)
        app.router.add_post("/v1/chat/completions", self._handle_chat_completions)
        app.router.add_get("/get_load", self._handle_load)
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_post("/abort_request", self._handle_abort)
        app.router.add_post("/flush_cache", self._handle_flush_cache)
        return app

    async def _handle_health(self, _request: web.Request) -> web.Response:
        if not self._accepting:
            return _json_error(_SHUTDOWN_MESSAGE, 503)
        return web.Response(status=200)

    async def _handle_server_info(self, _request: web.Request) -> web.Response:
        return web.json_response(self.server_info())

    async def _handle_model_info(self, _request: web.Request) -> web.Response:
        path = self.settings.served_model_path
        return web.json_response(
            {
                "model_path": path,
                "tokenizer_path": path,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": "default",
                "has_image_understanding": False,
                "has_audio_understanding": False,
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
            }
        )

    async def _handle_load(self, _request: web.Request) -> web.Response:
        core = self.core
        load = {
            "dp_rank": 0,
            "num_reqs": core.running_requests + core.waiting_requests,
            "num_waiting_reqs": core.waiting_requests,
            "num_tokens": core.kv_tokens_used,
        }
        return web.json_response([load])

    async def _handle_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(text=self.metrics_text(), content_type="text/plain", charset="utf-8")

    async def _handle_flush_cache(self, _request: web.Request) -> web.Response:
        return web.Response(text="Cache flushed (the simulated engine keeps no prefix cache).\n")

    async def _handle_abort(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _json_error("the request body is not valid JSON", 400)
        if not isinstance(body, dict):
            return _json_error("the request body must be a JSON object", 400)
        if body.get("abort_all"):
            self.core.abort_all("aborted by /abort_request")
        elif isinstance(body.get("rid"), str):
            self.core.abort_by_rid(body["rid"], "aborted by /abort_request")
        else:
            return _json_error("give 'rid' (a string) or 'abort_all': true", 400)
        return web.Response(status=200)

    @staticmethod
    async def _json_body(request: web.Request) -> object:
        try:
            return await request.json()
        except ValueError:
            raise EngineRequestError("the request body is not valid JSON") from None

    async def _handle_generate(self, request: web.Request) -> web.StreamResponse:
        if not self._accepting:
            return _json_error(_SHUTDOWN_MESSAGE, 503)
        try:
            generate = parse_generate_request(await self._json_body(request), self.core.tokenizer)
            state = self.core.admit(generate)
        except EngineRequestError as exc:
            return _json_error(exc.message, exc.status or 400)
        return await self._serve(request, state, _NativeFormat(self, state))

    async def _handle_openai(self, request: web.Request, kind: OpenAiKind) -> web.StreamResponse:
        if not self._accepting:
            return _openai_error(_SHUTDOWN_MESSAGE, 503)
        tokenizer = self.core.tokenizer
        try:
            body = await self._json_body(request)
            parsed = parse_openai_request(kind, body, tokenizer, self.settings.served_model_path)
            state = self.core.admit(parsed.generate)
        except EngineRequestError as exc:
            return _openai_error(exc.message, exc.status or 400)
        formatter = OpenAiFormatter(parsed, tokenizer, state.seed)
        return await self._serve(request, state, _OpenAiFormat(formatter))

    async def _handle_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle_openai(request, OpenAiKind.COMPLETION)

    async def _handle_chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle_openai(request, OpenAiKind.CHAT)

    async def _handle_models(self, _request: web.Request) -> web.Response:
        context_length = self.perf.model.max_context_tokens
        return web.json_response(model_list(self.settings.served_model_path, context_length))

    async def _handle_model(self, request: web.Request) -> web.Response:
        served = self.settings.served_model_path
        if request.match_info["model_id"] != served:
            return _openai_error(f"The model does not exist; this engine serves {served!r}", 404)
        return web.json_response(model_card(served, self.perf.model.max_context_tokens))

    async def _serve(
        self, request: web.Request, state: RequestState, fmt: _ResponseFormat
    ) -> web.StreamResponse:
        """Wait for the KV cache (decode), then answer in one body or as an SSE stream."""
        attributes = self._span_attributes(state)
        try:
            if self.mode is EngineMode.DECODE:
                with self._tracer.start_as_current_span(
                    "sglang.kv_transfer", attributes=attributes
                ) as span:
                    error = await self._wait_for_kv(state)
                    if error is not None:
                        span.set_status(trace.StatusCode.ERROR, error.message)
                        return fmt.error(error.message, error.status or 502)
            with self._tracer.start_as_current_span(
                _STAGE_SPANS[self.mode], attributes=attributes
            ) as span:
                response = (
                    await self._stream(request, state, fmt)
                    if state.request.stream
                    else await self._respond(state, fmt)
                )
                self._end_stage_span(span, state)
                return response
        finally:
            self.core.release(state)

    def _span_attributes(self, state: RequestState) -> dict[str, str | int]:
        request = state.request
        attributes: dict[str, str | int] = {
            "sglang.rid": request.rid,
            "sglang.disaggregation_mode": self.mode.value,
            "voltana.instance.id": self.instance_id,
            "gen_ai.usage.input_tokens": request.prompt_tokens,
            "gen_ai.request.max_tokens": request.max_new_tokens,
        }
        if request.bootstrap is not None:
            attributes["voltana.bootstrap_room"] = request.bootstrap.room
        return attributes

    @staticmethod
    def _end_stage_span(span: trace.Span, state: RequestState) -> None:
        if not span.is_recording():
            return
        span.set_attribute("gen_ai.usage.output_tokens", len(state.output_ids))
        reason = state.finish_reason
        if reason is not None:
            span.set_attribute("sglang.finish_reason", str(reason.get("type", "")))
            if reason.get("type") == "abort":
                span.set_status(trace.StatusCode.ERROR, str(reason.get("message", "")))
        if state.first_token_s is not None:
            # Simulated seconds (wall seconds x speedup), as the engine reports latencies.
            span.set_attribute("voltana.sim.ttft_s", state.first_token_s - state.arrival_s)

    async def _wait_for_kv(self, state: RequestState) -> EngineError | None:
        """Decode mode: fetch the KV cache, then start decoding. Returns the failure, if any."""
        bootstrap = state.request.bootstrap
        assert bootstrap is not None and bootstrap.host is not None
        assert self._session is not None
        fetch = asyncio.create_task(
            fetch_kv(
                self._session,
                bootstrap.host,
                bootstrap.port or self.settings.bootstrap_port or DEFAULT_BOOTSTRAP_PORT,
                bootstrap.room,
                self.settings.kv_wait_timeout_s,
            )
        )
        state.kv_wait = fetch
        try:
            # wait() does not raise when ``fetch`` is cancelled by an abort, only when we are.
            await asyncio.wait({fetch})
        finally:
            state.kv_wait = None
            if not fetch.done():
                fetch.cancel()
        if fetch.cancelled():  # aborted: the abort event is already queued for the response
            return None
        error = fetch.exception()
        if error is None:
            self.core.start_decode(state, fetch.result().first_token_id)
            return None
        if isinstance(error, EngineError):
            logger.info("request %s failed waiting for its KV cache: %s", state.request.rid, error)
            return error
        raise error

    @staticmethod
    async def _next_progress(state: RequestState) -> Progress:
        """The next event, merged with any already queued behind it."""
        progress = await state.events.get()
        new_ids = list(progress.new_token_ids)
        while progress.finish_reason is None and not state.events.empty():
            progress = state.events.get_nowait()
            new_ids += progress.new_token_ids
        return Progress(tuple(new_ids), progress.finish_reason, progress.at_s)

    async def _respond(self, state: RequestState, fmt: _ResponseFormat) -> web.Response:
        output_ids: list[int] = []
        while True:
            progress = await self._next_progress(state)
            output_ids += progress.new_token_ids
            if progress.finish_reason is not None:
                break
        return fmt.response(output_ids, progress.finish_reason)

    async def _stream(
        self, request: web.Request, state: RequestState, fmt: _ResponseFormat
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        output_ids: list[int] = []
        try:
            for payload in fmt.first_chunks():
                await response.write(sse_event(payload))
            while True:
                progress = await self._next_progress(state)
                first_position = len(output_ids)
                output_ids += progress.new_token_ids
                for payload in fmt.chunks(output_ids, first_position, progress.finish_reason):
                    await response.write(sse_event(payload))
                if progress.finish_reason is not None:
                    break
            await response.write(SSE_DONE)
            await response.write_eof()
        except ConnectionError:  # the client went away; release() cancels the request
            logger.debug("client of request %s disconnected", state.request.rid)
        return response


class _ResponseFormat(Protocol):
    """How one request's answer is written (SGLang-native or OpenAI bodies)."""

    def error(self, message: str, status: int) -> web.Response: ...

    def response(self, output_ids: list[int], finish_reason: FinishReason) -> web.Response: ...

    def first_chunks(self) -> list[dict[str, Any]]: ...

    def chunks(
        self, output_ids: list[int], first_position: int, finish_reason: FinishReason | None
    ) -> list[dict[str, Any]]: ...


class _NativeFormat:
    """SGLang's ``/generate`` bodies: text, output_ids and meta_info (cumulative or incremental)."""

    def __init__(self, engine: SimEngine, state: RequestState) -> None:
        self._engine = engine
        self._state = state
        self._tokenizer = engine.core.tokenizer
        self._incremental = engine.settings.incremental_streaming_output
        options = state.request.logprobs
        self._logprobs = LogprobSource(self._tokenizer, state.seed, options) if options else None

    def error(self, message: str, status: int) -> web.Response:
        return _json_error(message, status)

    def _meta(
        self, output_ids: list[int], first_position: int, finish_reason: FinishReason | None
    ) -> dict[str, Any]:
        state = self._state
        e2e_latency_s = first_token_latency_s = None
        if finish_reason is not None and state.finished_s is not None:
            e2e_latency_s = state.finished_s - state.arrival_s
            if state.first_token_s is not None:
                first_token_latency_s = state.first_token_s - state.arrival_s
        logprobs = None
        if self._logprobs is not None:
            # A decode instance never computed the prompt (SGLang's router merges the
            # prefill's input logprobs); a stream's later chunks carry no prompt either.
            with_prompt = self._engine.mode is not EngineMode.DECODE and first_position == 0
            prompt = state.request.input_ids if with_prompt else None
            logprobs = self._logprobs.meta(prompt, output_ids[first_position:], first_position)
        meta = meta_info(
            state.request.rid,
            state.request.prompt_tokens,
            len(output_ids),
            finish_reason,
            e2e_latency_s,
            logprobs,
            first_token_latency_s,
        )
        if finish_reason is not None and self._engine.settings.report_request_energy:
            # Voltana's extension: the GPU energy attributed to this request here.
            energy = self._engine.core.request_energy(state)
            meta["voltana_energy"] = {"active_j": energy.active_j, "idle_j": energy.idle_j}
        return meta

    def response(self, output_ids: list[int], finish_reason: FinishReason) -> web.Response:
        return web.json_response(
            {
                "text": visible_text(self._tokenizer, output_ids, finish_reason),
                "output_ids": output_ids,
                "meta_info": self._meta(output_ids, 0, finish_reason),
            }
        )

    def first_chunks(self) -> list[dict[str, Any]]:
        return []

    def chunks(
        self, output_ids: list[int], first_position: int, finish_reason: FinishReason | None
    ) -> list[dict[str, Any]]:
        shown_from = first_position if self._incremental else 0
        shown = output_ids[shown_from:]
        return [
            {
                "text": visible_text(self._tokenizer, output_ids, finish_reason, shown_from),
                "output_ids": list(shown),
                "meta_info": self._meta(output_ids, shown_from, finish_reason),
            }
        ]


class _OpenAiFormat:
    """OpenAI bodies (``/v1/completions``, ``/v1/chat/completions``)."""

    def __init__(self, formatter: OpenAiFormatter) -> None:
        self._formatter = formatter

    def error(self, message: str, status: int) -> web.Response:
        return _openai_error(message, status)

    def response(self, output_ids: list[int], finish_reason: FinishReason) -> web.Response:
        if finish_reason.get("type") == "abort":
            return _openai_error(str(finish_reason.get("message", "aborted")), 503)
        return web.json_response(self._formatter.response(output_ids, finish_reason))

    def first_chunks(self) -> list[dict[str, Any]]:
        return self._formatter.first_chunks()

    def chunks(
        self, output_ids: list[int], first_position: int, finish_reason: FinishReason | None
    ) -> list[dict[str, Any]]:
        if finish_reason is not None and finish_reason.get("type") == "abort":
            message = str(finish_reason.get("message", "aborted"))
            return [{"error": openai_error(message, 503)}]
        return self._formatter.chunks(output_ids, first_position, finish_reason)


def _openai_error(message: str, status: int) -> web.Response:
    return web.json_response(openai_error(message, status), status=status)
