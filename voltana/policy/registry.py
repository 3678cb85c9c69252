"""Named policies and routers, parsed from the strings users type (`static:1005/1410`)."""

from __future__ import annotations

from collections.abc import Callable

from voltana.errors import ConfigError, UnknownNameError
from voltana.hardware.gpus import GpuSpec
from voltana.policy.base import PolicyContext, PolicySuite, RoutingPolicy
from voltana.policy.common import full_range_clocks_mhz, paper_candidate_clocks_mhz
from voltana.policy.routing import LeastLoadedRouter, RoundRobinRouter
from voltana.policy.static import StaticClockPolicy
from voltana.policy.unified import UnifiedLaw

RouterFactory = Callable[[PolicyContext], RoutingPolicy]


# (context, router) -> suite; for an ablation ("<name>+<modifier>") also given the keywords
# ``clocks_mhz`` (candidate clocks replacing its own, or None) and ``name``.
SuiteFactory = Callable[..., PolicySuite]


# Ablations: "<policy>+<modifier>+..." - a clock set, or another router ("<router>-router").
# A clock set is cut to the context's allowed range (the calibrated one unless extrapolation
# is allowed).
CLOCK_SET_MODIFIERS: dict[str, Callable[[PolicyContext], tuple[int, ...]]] = {
    "full-range": lambda context: full_range_clocks_mhz(context.gpu, context.clock_range_mhz),
    "paper-clocks": lambda context: paper_candidate_clocks_mhz(
        context.gpu, context.clock_range_mhz
    ),
}
ROUTER_MODIFIER_SUFFIX = "-router"

ROUTERS: dict[str, RouterFactory] = {
    "round-robin": lambda context: RoundRobinRouter(),
    "least-loaded": lambda context: LeastLoadedRouter(),
}

# Filled by the modules that define dynamic policies (see `register_policy`).
_NAMED_SUITES: dict[str, SuiteFactory] = {}

STATIC_FORMS = ("static-max", "static:<MHz>", "static:<prefill MHz>/<decode MHz>")
ABLATION_FORM = "<policy>+full-range|+paper-clocks|+<router>-router"
STATIC_BEST = "static-best"


class SimulatorOnlyPolicyError(UnknownNameError):
    """A policy only the offline simulator resolves (static-best), asked of a live stack."""

    def __init__(self, name: str, live: list[str]) -> None:
        super().__init__("policy", name, live)
        self.args = (
            f"{name} is a hindsight sweep over a whole recorded workload, so only "
            f"`voltana simulate` runs it; live policies: {', '.join(live)}",
        )


def _router_modifier(modifier: str) -> str | None:
    """The router a "<router>-router" modifier names (None: not a router modifier)."""
    if modifier.endswith(ROUTER_MODIFIER_SUFFIX) and modifier != ROUTER_MODIFIER_SUFFIX:
        return modifier.removesuffix(ROUTER_MODIFIER_SUFFIX)
    return None


def static_best_router(name: str) -> tuple[bool, str | None]:
    """(is ``name`` a `static-best` form, the router its "+<router>-router" asks for). The
    hindsight sweep takes no clock-set modifier: it searches every allowed clock already."""
    base, *modifiers = name.split("+")
    if base != STATIC_BEST:
        return False, None
    _load_builtin_policies()  # the routers they register (voltana, ecoroute) are valid here too
    if len(modifiers) > 1 or any(_router_modifier(m) is None for m in modifiers):
        raise ConfigError(
            f"policy {name!r}: static-best takes only a router modifier, "
            f"static-best+<router>{ROUTER_MODIFIER_SUFFIX} (routers: {', '.join(router_names())})"
        )
    router = _router_modifier(modifiers[0]) if modifiers else None
    if router is not None and router not in ROUTERS:
        raise UnknownNameError("router", router, ROUTERS)
    return True, router


def register_policy(name: str, factory: SuiteFactory) -> None:
    _NAMED_SUITES[name] = factory


def register_router(name: str, factory: RouterFactory) -> None:
    ROUTERS[name] = factory


def policy_names() -> list[str]:
    _load_builtin_policies()
    # static-best is resolved by the simulator (a hindsight sweep), not built as a suite.
    return [
        *STATIC_FORMS[:1],
        STATIC_BEST,
        *sorted(_NAMED_SUITES),
        *STATIC_FORMS[1:],
        ABLATION_FORM,
    ]


def live_policy_names() -> list[str]:
    """The policies a running controller and router can use (all but the simulator's
    hindsight sweep, static-best)."""
    return [name for name in policy_names() if name != STATIC_BEST]


def router_names() -> list[str]:
    _load_builtin_policies()
    return sorted(ROUTERS)


def build_router(name: str, context: PolicyContext) -> RoutingPolicy:
    _load_builtin_policies()
    try:
        factory = ROUTERS[name]
    except KeyError:
        raise UnknownNameError("router", name, ROUTERS) from None
    return factory(context)


def parse_clock_mhz(text: str, gpu: GpuSpec, clock_range_mhz: tuple[int, int] | None = None) -> int:
    """A supported clock of ``gpu`` given in MHz, inside ``clock_range_mhz`` when given."""
    try:
        clock_mhz = int(text)
    except ValueError:
        raise ConfigError(f"clock {text!r} is not an integer number of MHz") from None
    if clock_mhz not in gpu.supported_sm_clocks_mhz:
        raise ConfigError(
            f"{clock_mhz} MHz is not a supported SM clock of {gpu.key} "
            f"({gpu.min_sm_clock_mhz}-{gpu.max_sm_clock_mhz} MHz in steps of "
            f"{gpu.sm_clock_step_mhz})"
        )
    if clock_range_mhz and not clock_range_mhz[0] <= clock_mhz <= clock_range_mhz[1]:
        raise ConfigError(
            f"{clock_mhz} MHz is outside the range where the {gpu.key} power/latency model is "
            f"calibrated ({clock_range_mhz[0]}-{clock_range_mhz[1]} MHz, docs/power-model.md); "
            "--allow-extrapolated-clocks allows it"
        )
    return clock_mhz


def build_suite(
    name: str, context: PolicyContext, router: RoutingPolicy | None = None
) -> PolicySuite:
    """Build the policy called ``name``; ``router`` overrides the policy's own router. Its
    colocated-instance law composes its two phase laws (voltana.policy.unified)."""
    suite = _build_phase_suite(name, context, router)
    if suite.unified is None:
        suite.unified = UnifiedLaw(suite.prefill, suite.decode, context.perf)
    return suite


def _build_phase_suite(
    name: str, context: PolicyContext, router: RoutingPolicy | None
) -> PolicySuite:
    _load_builtin_policies()
    gpu = context.gpu
    if name == "static-max":
        clock = StaticClockPolicy(gpu.default_sm_clock_mhz)
        return PolicySuite(name, clock, clock, router or RoundRobinRouter())
    if name.startswith("static:"):
        spec = name.removeprefix("static:")
        prefill_text, slash, decode_text = spec.partition("/")
        if slash and not decode_text:
            raise ConfigError(f"policy {name!r}: missing the decode clock after '/'")
        prefill = StaticClockPolicy(parse_clock_mhz(prefill_text, gpu))
        decode = StaticClockPolicy(parse_clock_mhz(decode_text or prefill_text, gpu))
        return PolicySuite(name, prefill, decode, router or RoundRobinRouter())
    if static_best_router(name)[0]:
        raise SimulatorOnlyPolicyError(name, live_policy_names())
    base, *modifiers = name.split("+")
    factory = _NAMED_SUITES.get(base)
    if factory is None:
        raise UnknownNameError("policy", base, live_policy_names())
    clocks: tuple[int, ...] | None = None
    for modifier in modifiers:
        if modifier in CLOCK_SET_MODIFIERS:
            clocks = CLOCK_SET_MODIFIERS[modifier](context)
        elif (router_name := _router_modifier(modifier)) is not None:
            # An explicit router (e.g. --router) still wins over the one the name asks for.
            router = router or build_router(router_name, context)
        else:
            raise ConfigError(
                f"policy {name!r}: unknown modifier {modifier!r} (valid: "
                f"{', '.join(CLOCK_SET_MODIFIERS)}, <router>{ROUTER_MODIFIER_SUFFIX} with a router "
                f"of: {', '.join(router_names())})"
            )
    if not modifiers:  # a plain name: any factory taking (context, router) serves
        return factory(context, router)
    return factory(context, router, clocks_mhz=clocks, name=name)


def _load_builtin_policies() -> None:
    """Add the shipped dynamic policies and routers (deferred: no work at import time); a name
    registered before keeps its factory."""
    from voltana.policy.builtin import BUILTIN_POLICIES, BUILTIN_ROUTERS

    for name, factory in BUILTIN_POLICIES.items():
        _NAMED_SUITES.setdefault(name, factory)
    for name, router_factory in BUILTIN_ROUTERS.items():
        ROUTERS.setdefault(name, router_factory)
