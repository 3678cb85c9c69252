"""The Voltana services, one folder each: telemetry, controller, router, node agent.

Installed as ``voltana.services`` (see setup.py).
"""
