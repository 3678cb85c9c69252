"""HTTP tracing, on the stable HTTP semantic conventions only (no older ``http.*`` duplicates).

Client: ``client_trace_configs`` for an ``aiohttp.ClientSession`` (opentelemetry-instrumentation-
aiohttp-client): one CLIENT span per request with the W3C ``traceparent`` injected into its
headers, named ``{method} {url.template}`` (``POST /generate``, ``GET /kv/{room}``) and carrying
``http.request.method``, ``url.full``, ``url.template``, ``server.address``, ``server.port``
and ``http.response.status_code``.

Server: ``server_middlewares`` for an ``aiohttp.web.Application``: one SERVER span per request,
continuing the caller's ``traceparent``, named ``{method} {http.route}`` (``POST /generate``)
with ``http.request.method``, ``http.route``, ``url.path``, ``url.scheme``, ``server.address``,
``server.port``, ``client.address``, ``user_agent.original``, ``http.response.status_code`` and,
on a 5xx or an exception, ``error.type``. Polled endpoints (``/health``, ``/metrics``, load
probes) are traced only when the caller sends a ``traceparent``: as roots every few hundred
milliseconds they would bury the request traces.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import propagate, trace
from opentelemetry.instrumentation._semconv import _StabilityMode
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

TRACEPARENT = "traceparent"
POLLED_PATHS = frozenset(
    {"/health", "/health_generate", "/metrics", "/get_load", "/get_server_info", "/server_info"}
)
# Client paths with a variable part, as their route template (every other path Voltana calls
# is a fixed route, its own template).
_CLIENT_PATH_TEMPLATES = (("/kv/", "/kv/{room}"),)
_TRACER_NAME = "voltana.observability.http"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def client_url_template(path: str) -> str:
    """The low-cardinality template of a path Voltana calls (``/kv/17`` -> ``/kv/{room}``)."""
    for prefix, template in _CLIENT_PATH_TEMPLATES:
        if path.startswith(prefix):
            return template
    return path or "/"


def _name_client_span(span: Span, params: aiohttp.TraceRequestStartParams) -> None:
    if span.is_recording():
        template = client_url_template(params.url.path)
        span.update_name(f"{params.method} {template}")
        span.set_attribute("url.template", template)


def client_trace_configs(
    tracer_provider: trace.TracerProvider | None,
) -> list[aiohttp.TraceConfig]:
    """Trace configs for a ClientSession whose requests should be traced (and carry context)."""
    return [
        create_trace_config(
            tracer_provider=tracer_provider,
            sem_conv_opt_in_mode=_StabilityMode.HTTP,
            request_hook=_name_client_span,
        )
    ]


def _route(request: web.Request) -> str | None:
    """The matched route's template (``/kv/{room}``), None when no route matched."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def _request_attributes(request: web.Request, route: str | None) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "http.request.method": request.method,
        "url.path": request.path,
        "url.scheme": request.scheme,
    }
    if route is not None:
        attributes["http.route"] = route
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        attributes["server.address"] = str(sockname[0])
        attributes["server.port"] = int(sockname[1])
    if request.remote:
        attributes["client.address"] = request.remote
    user_agent = request.headers.get("User-Agent")
    if user_agent:
        attributes["user_agent.original"] = user_agent
    return attributes


def _end_with_status(span: Span, status_code: int) -> None:
    span.set_attribute("http.response.status_code", status_code)
    if status_code >= 500:  # a 4xx is the client's error, not the server span's
        span.set_attribute("error.type", str(status_code))
        span.set_status(Status(StatusCode.ERROR))


def server_middlewares(tracer_provider: trace.TracerProvider | None) -> list[Middleware]:
    """Middlewares that trace an aiohttp application's requests (see the module docstring)."""
    tracer = trace.get_tracer(_TRACER_NAME, tracer_provider=tracer_provider)

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in POLLED_PATHS and TRACEPARENT not in request.headers:
            return await handler(request)
        route = _route(request)
        with tracer.start_as_current_span(
            f"{request.method} {route}" if route is not None else request.method,
            context=propagate.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes=_request_attributes(request, route),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                response = await handler(request)
            except web.HTTPException as error:  # aiohttp's raised responses
                _end_with_status(span, error.status)
                raise
            except Exception as error:
                span.set_attribute("error.type", type(error).__qualname__)
                span.set_status(Status(StatusCode.ERROR, str(error)))
                span.record_exception(error)
                raise
            _end_with_status(span, response.status)
            return response

    return [traced]
