"""The contract every part of Voltana speaks: per-instance state and SLO types, the cluster
snapshot, what a request is before placement and what policies decide, and where an instance
can be reached (its GPUs). Plain, immutable values, no I/O; the bottom of the package above
plumbing (voltana.rpc.limits bounds its values).

Producers (engine reporters, the simulator, telemetry) and consumers (policies, router,
controller) import these; the protos mirror them field for field (tests/test_protos.py).
"""
