"""ControllerService RPCs: a thin translation layer over the control loop and policy book.

Errors are raised as VoltanaErrors; the shared interceptor (voltana.rpc) turns them into
status codes (unknown policy names and bad SLOs are INVALID_ARGUMENT).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

import grpc.aio

from voltana.contract.state import Phase, SloTarget, slo_problem
from voltana.control import MAX_NOTIFIED_INSTANCES, Served
from voltana.errors import InvalidArgumentError, NotFoundError, VoltanaError
from voltana.rpc.limits import check_id, check_ids, check_name
from voltana.rpc.names import CONTROLLER_SERVICE, method_names
from voltana.services.controller.convert import (
    control_to_proto,
    policy_info_to_proto,
)
from voltana.services.controller.errors import InvalidSloError
from voltana.services.controller.loop import Clock, ControlLoop
from voltana.services.controller.policies import PolicyBook
from voltana.services.telemetry.convert import slo_from_proto, slo_to_proto, state_from_proto
from voltana.v1 import common_pb2, controller_pb2, controller_pb2_grpc

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

# Runtime knobs that change every GPU's clock: they need the control-plane token.
CONTROLLER_PRIVILEGED_METHODS = method_names(
    CONTROLLER_SERVICE, "SetSlo", "SetPolicy", "NotifyPlacement"
)

_PHASES_FROM_PROTO: dict[int, Phase | None] = {
    common_pb2.PHASE_UNSPECIFIED: None,
    common_pb2.PHASE_PREFILL: Phase.PREFILL,
    common_pb2.PHASE_DECODE: Phase.DECODE,
    common_pb2.PHASE_UNIFIED: Phase.UNIFIED,
}


class ControllerServicer(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(
        self,
        loop: ControlLoop,
        policies: PolicyBook,
        *,
        clock: Clock,
        status_decisions: int,
        publish_slo: Callable[[SloTarget], Awaitable[float]] | None = None,
    ) -> None:
        """``publish_slo`` hands a SetSlo's SLO to its owner (telemetry) before it is steered to
        here; None: this controller's SLO is its own."""
        self._publish_slo = publish_slo
        self._loop = loop
        self._policies = policies
        self._clock = clock
        self._status_decisions = status_decisions

    async def GetStatus(
        self, request: controller_pb2.GetStatusRequest, context: _Context
    ) -> controller_pb2.GetStatusResponse:
        if request.max_decisions < 0:
            raise InvalidArgumentError(f"max_decisions must be >= 0, got {request.max_decisions}")
        max_decisions = request.max_decisions or self._status_decisions
        check_ids(request.instance_ids, "instance_ids")
        controls = self._loop.controls
        unknown = sorted(set(request.instance_ids) - set(controls))
        if unknown:
            raise NotFoundError(
                f"the controller has not seen instance(s) {unknown}; known: {sorted(controls)}"
            )
        wanted = set(request.instance_ids) or set(controls)
        policies = self._policies
        now_s = self._clock()
        return controller_pb2.GetStatusResponse(
            now_s=now_s,
            slo=slo_to_proto(policies.slo),
            prefill_policy_name=policies.policy_name(Phase.PREFILL),
            decode_policy_name=policies.policy_name(Phase.DECODE),
            unified_policy_name=policies.policy_name(Phase.UNIFIED),
            instances=[
                control_to_proto(
                    control,
                    policy_name=policies.policy_name(control.phase),
                    slo=self._loop.law_target(instance_id, now_s),
                    max_decisions=max_decisions,
                )
                for instance_id, control in controls.items()
                if instance_id in wanted
            ],
        )

    async def NotifyPlacement(
        self, request: controller_pb2.NotifyPlacementRequest, context: _Context
    ) -> controller_pb2.NotifyPlacementResponse:
        for name, entries in (("instances", request.instances), ("serving", request.serving)):
            if len(entries) > MAX_NOTIFIED_INSTANCES:
                raise InvalidArgumentError(
                    f"a placement notice lists at most {MAX_NOTIFIED_INSTANCES} {name}, got "
                    f"{len(entries)}"
                )
        if request.router_id:
            check_id(request.router_id, "router_id", error=InvalidArgumentError)
        served = _served_from_proto(request.serving)
        states = []
        for message in request.instances:
            check_id(message.instance_id, "instance_id", error=InvalidArgumentError)
            try:
                states.append(state_from_proto(message))
            except VoltanaError as error:
                raise InvalidArgumentError(str(error)) from None
        now_s = self._clock()
        if served:
            # Before the placed instances are decided: their laws run against these targets.
            self._loop.on_served(request.router_id, served, now_s)
        clocks = await self._loop.on_placement(states, now_s)
        return controller_pb2.NotifyPlacementResponse(sm_clock_mhz=clocks)

    async def SetSlo(
        self, request: controller_pb2.SetSloRequest, context: _Context
    ) -> controller_pb2.SetSloResponse:
        if not request.HasField("slo"):
            raise InvalidSloError("SetSlo needs an slo with ttft_ms and itl_ms")
        slo = slo_from_proto(request.slo)
        problem = slo_problem(slo)
        if problem is not None:
            raise InvalidSloError(f"invalid SLO: {problem}")
        if self._publish_slo is not None:
            # Telemetry holds the cluster SLO: routers, telemetry's aggregates and every
            # controller follow it from there. One it did not take is not in force anywhere.
            self._loop.slo_published(await self._publish_slo(slo))
        previous = await self._policies.set_slo(slo)
        self._loop.wake()
        return controller_pb2.SetSloResponse(previous_slo=slo_to_proto(previous), slo=request.slo)

    async def SetPolicy(
        self, request: controller_pb2.SetPolicyRequest, context: _Context
    ) -> controller_pb2.SetPolicyResponse:
        try:
            phase = _PHASES_FROM_PROTO[request.phase]
        except KeyError:
            raise InvalidArgumentError(f"unknown phase {request.phase}") from None
        check_name(request.policy_name, "policy_name")
        # UnknownNameError (INVALID_ARGUMENT) lists the valid names.
        await self._policies.set_policy(request.policy_name, phase)
        self._loop.wake()
        return controller_pb2.SetPolicyResponse(
            prefill_policy_name=self._policies.policy_name(Phase.PREFILL),
            decode_policy_name=self._policies.policy_name(Phase.DECODE),
            unified_policy_name=self._policies.policy_name(Phase.UNIFIED),
        )

    async def ListPolicies(
        self, request: controller_pb2.ListPoliciesRequest, context: _Context
    ) -> controller_pb2.ListPoliciesResponse:
        return controller_pb2.ListPoliciesResponse(
            policies=[policy_info_to_proto(info) for info in await self._policies.known_policies()],
            prefill_policy_name=self._policies.policy_name(Phase.PREFILL),
            decode_policy_name=self._policies.policy_name(Phase.DECODE),
            unified_policy_name=self._policies.policy_name(Phase.UNIFIED),
        )


def _served_from_proto(entries: Iterable[controller_pb2.ServedSlo]) -> dict[str, Served]:
    """A notice's SLO classes per instance; INVALID_ARGUMENT for a bad id or target."""
    served: dict[str, Served] = {}
    for entry in entries:
        check_id(entry.instance_id, "serving.instance_id", error=InvalidArgumentError)
        own_slo = None
        if entry.HasField("own_slo"):
            own_slo = slo_from_proto(entry.own_slo)
            problem = slo_problem(own_slo)
            if problem is not None:
                raise InvalidArgumentError(
                    f"serving[{entry.instance_id!r}].own_slo is invalid: {problem}"
                )
        served[entry.instance_id] = Served(entry.cluster_slo, own_slo)
    return served
