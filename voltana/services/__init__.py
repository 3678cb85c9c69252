"""The Voltana services, one folder each: telemetry, controller, router, node agent.

Each service is built from its settings object and starts and stops in-process; services import
the core below them (contract, policy, rpc, observability), never ``voltana.cli`` or
``voltana.stack``, which sit on top (the layer contract in pyproject.toml).
"""
