"""`voltana-elastic`: Voltana's clock laws and router, plus the elasticity planner, which takes
whole instances out of service when the forecast leaves room (voltana.policy.planner).

The planner rides on the suite (``PolicySuite.planner``) rather than on the cluster's
configuration: whether instances come and go is an operating decision, like the clocks, and a
policy name is how users choose one (`--policy voltana-elastic` beside `--policy voltana`); the
cluster's configuration keeps only the physics of starting and stopping (engine start time,
the draw of a released GPU).
"""

from __future__ import annotations

from voltana.policy.base import PolicyContext, PolicySuite, RoutingPolicy
from voltana.policy.planner import ElasticPlanner, PlannerConfig
from voltana.policy.voltana import build_voltana_suite


def build_elastic_suite(
    context: PolicyContext,
    router: RoutingPolicy | None,
    *,
    clocks_mhz: tuple[int, ...] | None = None,
    name: str = "voltana-elastic",
    planner: PlannerConfig | None = None,
) -> PolicySuite:
    suite = build_voltana_suite(context, router, clocks_mhz=clocks_mhz, name=name)
    suite.planner = ElasticPlanner(context.perf, context.slo, planner)
    return suite
