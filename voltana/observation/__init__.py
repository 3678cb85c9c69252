"""The observation contract: every quantity a policy may see, defined once.

The offline simulator, the simulated SGLang engine, the reporter of a real SGLang server and the
live router all produce `InstanceState` through these pieces, so one engine history gives one
observation whichever of them watched it:

- `LatencyWindow`: recent TTFT (p90) and ITL (mean) over one sliding window, computed from
  SGLang's histogram buckets - exactly what a Prometheus scrape of a real server allows;
- `ArrivalWindow`: requests and prompt tokens per second counted at placement (the router's
  view), not at completion;
- `InflightLedger`: requests placed on an instance but not yet visible in its report, so nothing
  is counted twice (once by the report, once by the router) or not at all;
- `ObservationConfig`: the window and statistic every producer uses.

Nothing that a real deployment cannot observe (exact output lengths, future arrivals) is here.
"""

from voltana.observation.config import DEFAULT_OBSERVATION, ObservationConfig
from voltana.observation.latency import ITL_BUCKETS_S, TTFT_BUCKETS_S, LatencyWindow
from voltana.observation.ledger import InflightLedger
from voltana.observation.observer import ENGINE_REPORT_FIELDS, EngineGauges, InstanceObserver
from voltana.observation.rates import ArrivalWindow

__all__ = [
    "DEFAULT_OBSERVATION",
    "ENGINE_REPORT_FIELDS",
    "ITL_BUCKETS_S",
    "TTFT_BUCKETS_S",
    "ArrivalWindow",
    "EngineGauges",
    "InflightLedger",
    "InstanceObserver",
    "LatencyWindow",
    "ObservationConfig",
]
