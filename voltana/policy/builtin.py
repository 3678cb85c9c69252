"""Registers the dynamic policies and predictor-based routers shipped with Voltana (imported
lazily by the registry)."""

from voltana.policy.common import fit_predictor, full_range_clocks_mhz, paper_candidate_clocks_mhz
from voltana.policy.paper import EcoRoute, build_paper_suite, build_paper_suite_m0
from voltana.policy.registry import register_policy, register_router
from voltana.policy.voltana import VOLTANA_TOKEN_BREAKPOINTS, VoltanaRouter, build_voltana_suite

register_policy("voltana-paper", build_paper_suite)
register_policy("voltana-paper-m0", build_paper_suite_m0)
register_policy("voltana", build_voltana_suite)
register_router(
    "ecoroute",
    lambda context: EcoRoute(
        fit_predictor(
            context.perf,
            paper_candidate_clocks_mhz(context.gpu, context.clock_range_mhz),
            max_batch=context.max_running_requests,
        )
    ),
)
register_router(
    "voltana",
    lambda context: VoltanaRouter(
        fit_predictor(
            context.perf,
            full_range_clocks_mhz(context.gpu, context.clock_range_mhz),
            VOLTANA_TOKEN_BREAKPOINTS,
            max_batch=context.max_running_requests,
        )
    ),
)
