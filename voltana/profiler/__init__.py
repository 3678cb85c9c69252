"""`voltana profile`: measure a latency/power profile of a GPU serving one model.

Sweeps SM clocks (set through the node agent's lease RPCs, never NVML directly) x prompt lengths
x decode batch sizes against a running SGLang instance, measures prefill and decode latency
through SGLang's HTTP API and power through the agent's energy counters, and writes a measured
profile (``voltana.perf.measured``) that every policy can use instead of the analytical model.
"""

from voltana.profiler.agent_clocks import AgentClockControl, GroupReading
from voltana.profiler.runner import Profiler, ProfileSettings

__all__ = ["AgentClockControl", "GroupReading", "ProfileSettings", "Profiler"]
