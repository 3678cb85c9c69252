"""Fully qualified gRPC service names of voltana.v1 (as health checks and reflection list them).

Plain strings, so importing them loads no generated code; tests/test_protos.py checks them
against the descriptors.
"""

from __future__ import annotations

NODE_AGENT_SERVICE = "voltana.v1.NodeAgentService"
TELEMETRY_SERVICE = "voltana.v1.TelemetryService"
CONTROLLER_SERVICE = "voltana.v1.ControllerService"
ROUTER_SERVICE = "voltana.v1.RouterService"


def method_names(service: str, *methods: str) -> frozenset[str]:
    """Full gRPC method names ("/package.Service/Method"), as interceptors see them."""
    return frozenset(f"/{service}/{method}" for method in methods)
