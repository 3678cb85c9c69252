"""Which frequency policy runs each phase, under which SLO: the controller's pure-core handle.

The controller never decides clocks itself; it asks the policies built here by
``voltana.policy.registry.build_suite``, exactly as the simulator does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from voltana.contract.state import Phase, SloTarget
from voltana.errors import UnknownNameError, VoltanaError
from voltana.hardware import GPU_CATALOG, GpuSpec, ModelSpec, get_gpu
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.perf.model import PerformanceModel
from voltana.perf.selection import resolve_physics
from voltana.policy.base import FrequencyPolicy, PolicyContext, PolicySuite
from voltana.policy.registry import STATIC_FORMS, build_suite, policy_names

_STATIC_DESCRIPTIONS: Mapping[str, str] = {
    "static-max": "every GPU locked at its default (maximum) SM clock",
    "static:<MHz>": "one fixed SM clock for both phases (template: put a supported clock)",
    "static:<prefill MHz>/<decode MHz>": "a fixed SM clock per phase (template)",
}

# (policy name, GPU key) → suite built for that GPU.
_SuiteKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    name: str
    description: str
    phases: tuple[Phase, ...] = (Phase.PREFILL, Phase.DECODE, Phase.UNIFIED)


def build_policy_suite(
    name: str,
    gpu: GpuSpec,
    model: ModelSpec,
    slo: SloTarget,
    perf: PerformanceModel | None = None,
) -> PolicySuite:
    """The suite ``name`` for ``model`` on ``gpu`` steering to ``slo`` (no shared state, so it
    may run in a worker thread: dynamic policies fit predictors, which takes a while).
    ``perf``: a measured profile's model; None = the analytical model of ``gpu`` and ``model``."""
    perf = perf or AnalyticalPerformanceModel.for_hardware(gpu, model)
    return build_suite(name, PolicyContext(gpu=gpu, perf=perf, slo=slo))


class PolicyBook:
    """Policy names per phase and the SLO; suites per GPU model.

    A suite is built for the GPU an instance reports when the catalog knows it (clocks and
    the performance model differ per GPU), else for the controller's configured GPU. The
    async changes (policy, SLO) build new suites off the event loop and swap them in at once,
    so control ticks never wait on a predictor fit; policies start from fresh memory.
    """

    def __init__(
        self,
        *,
        policy_name: str,
        slo: SloTarget,
        gpu_key: str,
        model_key: str,
        tensor_parallel: int,
        model_config_path: str | None = None,
        profile_path: str | None = None,
    ) -> None:
        physics = resolve_physics(
            gpu_key=gpu_key,
            model_key=model_key,
            tensor_parallel=tensor_parallel,
            model_config_path=model_config_path,
            profile_path=profile_path,
        )
        self._default_gpu = physics.gpu
        self._model = physics.model
        # Instances on the profiled GPU are steered with the measured profile.
        self._profiled = physics.perf if physics.profile is not None else None
        self._slo = slo
        self._names = {phase: policy_name for phase in Phase}
        self._suites: dict[_SuiteKey, PolicySuite] = {}
        self._known: list[PolicyInfo] | None = None
        # One change at a time: each builds from the state the previous one left.
        self._changing = asyncio.Lock()
        self._suite(policy_name, self._default_gpu)  # fail at start on an unknown name

    @property
    def slo(self) -> SloTarget:
        return self._slo

    def policy_name(self, phase: Phase) -> str:
        return self._names[phase]

    def gpu_for(self, gpu_key: str) -> GpuSpec:
        """The GPU an instance reporting ``gpu_key`` runs on: the configured (or profiled)
        one for its own key or an unknown one, else the catalog's."""
        key = gpu_key.lower()
        if key == self._default_gpu.key:
            return self._default_gpu
        return GPU_CATALOG.get(key, self._default_gpu)

    def _gpu_by_key(self, gpu_key: str) -> GpuSpec:
        return self._default_gpu if gpu_key == self._default_gpu.key else get_gpu(gpu_key)

    def _perf_for(self, gpu: GpuSpec) -> PerformanceModel | None:
        return self._profiled if gpu.key == self._default_gpu.key else None

    def policy_for(self, phase: Phase, gpu_key: str) -> FrequencyPolicy:
        """The policy deciding for an instance of ``phase`` on a ``gpu_key`` GPU.

        Raises ConfigError when the policy cannot run on that GPU (e.g. a fixed clock it lacks).
        A colocated instance runs the suite's composed law (voltana.policy.unified).
        """
        suite = self._suite(self._names[phase], self.gpu_for(gpu_key))
        if phase is Phase.PREFILL:
            return suite.prefill
        if phase is Phase.DECODE:
            return suite.decode
        assert suite.unified is not None  # build_suite composes one for every suite
        return suite.unified

    def _suite(self, name: str, gpu: GpuSpec) -> PolicySuite:
        suite = self._suites.get((name, gpu.key))
        if suite is None:
            suite = build_policy_suite(name, gpu, self._model, self._slo, self._perf_for(gpu))
            self._suites[name, gpu.key] = suite
        return suite

    async def _build(
        self, keys: Iterable[_SuiteKey], slo: SloTarget
    ) -> dict[_SuiteKey, PolicySuite]:
        def build_all() -> dict[_SuiteKey, PolicySuite]:
            built = {}
            for name, gpu_key in keys:
                gpu = self._gpu_by_key(gpu_key)
                built[name, gpu_key] = build_policy_suite(
                    name, gpu, self._model, slo, self._perf_for(gpu)
                )
            return built

        return await asyncio.to_thread(build_all)

    async def set_policy(self, name: str, phase: Phase | None) -> None:
        """Switch ``phase`` (None = every phase, colocated instances too) to ``name``;
        UnknownNameError/ConfigError when invalid."""
        async with self._changing:
            await self._set_policy(name, phase)

    async def _set_policy(self, name: str, phase: Phase | None) -> None:
        names = dict(self._names)
        for each in tuple(Phase) if phase is None else (phase,):
            names[each] = name
        gpu_keys = {self._default_gpu.key} | {gpu_key for _, gpu_key in self._suites}
        try:
            built = await self._build(((name, gpu_key) for gpu_key in sorted(gpu_keys)), self._slo)
        except UnknownNameError:
            # The registry also lists names only the simulator resolves (static-best).
            valid = [info.name for info in await self.known_policies()]
            raise UnknownNameError("policy", name, valid) from None
        in_use = set(names.values())
        kept = {key: suite for key, suite in self._suites.items() if key[0] in in_use - {name}}
        self._suites = {**kept, **built}
        self._names = names

    async def set_slo(self, slo: SloTarget) -> SloTarget:
        """Steer to ``slo`` from now on (suites rebuilt for it); returns the previous SLO."""
        async with self._changing:
            built = await self._build(list(self._suites), slo)
            previous, self._slo, self._suites = self._slo, slo, built
            return previous

    async def known_policies(self) -> list[PolicyInfo]:
        """The policies this controller can run (static templates included), described."""
        if self._known is None:
            self._known = await asyncio.to_thread(self._describe_all)
        return self._known

    def _describe_all(self) -> list[PolicyInfo]:
        known = []
        for name in policy_names():
            if name in STATIC_FORMS:
                known.append(PolicyInfo(name, _STATIC_DESCRIPTIONS.get(name, "fixed SM clocks")))
                continue
            try:
                suite = build_policy_suite(
                    name,
                    self._default_gpu,
                    self._model,
                    self._slo,
                    self._perf_for(self._default_gpu),
                )
            except VoltanaError:
                continue  # e.g. "static-best", a hindsight sweep only the simulator resolves
            description = f"prefill: {suite.prefill.name}; decode: {suite.decode.name}"
            known.append(PolicyInfo(name, description))
        return known
