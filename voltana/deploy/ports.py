"""Default ports of Voltana's services: one list for the CLI, compose and Kubernetes."""

from __future__ import annotations

from voltana.engine.protocol import DEFAULT_BOOTSTRAP_PORT

ROUTER_PORT = 50051
TELEMETRY_PORT = 50052
CONTROLLER_PORT = 50053
AGENT_PORT = 50054
# SGLang's HTTP server and its PD KV bootstrap server.
ENGINE_PORT = 30000
BOOTSTRAP_PORT = DEFAULT_BOOTSTRAP_PORT
# The router's HTTP front door (OpenAI /v1/*, SGLang /generate).
ROUTER_HTTP_PORT = 8000
# Prometheus /metrics of each service (simulated engines serve SGLang's on their own port).
ROUTER_METRICS_PORT = 9401
TELEMETRY_METRICS_PORT = 9402
CONTROLLER_METRICS_PORT = 9403
AGENT_METRICS_PORT = 9404
