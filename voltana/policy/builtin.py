"""The dynamic policies and predictor-based routers shipped with Voltana, as tables the registry
loads lazily (this module imports nothing of the registry, so the two form no circle)."""

from collections.abc import Callable

from voltana.policy.base import PolicyContext, PolicySuite, RoutingPolicy
from voltana.policy.common import fit_predictor, full_range_clocks_mhz, paper_candidate_clocks_mhz
from voltana.policy.elastic import build_elastic_suite
from voltana.policy.paper import EcoRoute, build_paper_suite, build_paper_suite_m0
from voltana.policy.voltana import VOLTANA_TOKEN_BREAKPOINTS, VoltanaRouter, build_voltana_suite

BUILTIN_POLICIES: dict[str, Callable[..., PolicySuite]] = {
    "voltana-paper": build_paper_suite,
    "voltana-paper-m0": build_paper_suite_m0,
    "voltana": build_voltana_suite,
    "voltana-elastic": build_elastic_suite,
}


def _ecoroute(context: PolicyContext) -> RoutingPolicy:
    return EcoRoute(
        fit_predictor(
            context.perf,
            paper_candidate_clocks_mhz(context.gpu, context.clock_range_mhz),
            max_batch=context.max_running_requests,
        )
    )


def _voltana_router(context: PolicyContext) -> RoutingPolicy:
    return VoltanaRouter(
        fit_predictor(
            context.perf,
            full_range_clocks_mhz(context.gpu, context.clock_range_mhz),
            VOLTANA_TOKEN_BREAKPOINTS,
            max_batch=context.max_running_requests,
        )
    )


BUILTIN_ROUTERS: dict[str, Callable[[PolicyContext], RoutingPolicy]] = {
    "ecoroute": _ecoroute,
    "voltana": _voltana_router,
}
