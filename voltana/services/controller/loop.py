"""The control loop: latest cluster state in, policy decisions out, clocks pushed to agents.

Thin shell around the pure policies: per tick, every instance's state goes to its phase's
policy; a decision that differs from the clock the agent confirmed becomes one SetClocks
(in its own task, so a slow agent delays nobody else). Leases are renewed every ttl/3; a lost
lease makes the next tick apply the decision again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from voltana.contract.instances import InstanceInfo
from voltana.contract.state import ClockDecision, ClusterSnapshot, InstanceState, SloTarget
from voltana.control import SERVED_TTL_S, NoticeBoard, Served, ServedReports, needs_clock_command
from voltana.errors import FailedPreconditionError, NotFoundError, VoltanaError
from voltana.lifecycle import cancel_and_wait
from voltana.services.controller.agents import AgentClients
from voltana.services.controller.feed import ClusterView, SnapshotFeed
from voltana.services.controller.metrics import ControllerMetrics
from voltana.services.controller.policies import PolicyBook
from voltana.services.controller.records import DecisionRecord, InstanceControl
from voltana.services.controller.settings import ControllerSettings

_LOG = logging.getLogger(__name__)

Clock = Callable[[], float]


class ControlLoop:
    def __init__(
        self,
        settings: ControllerSettings,
        policies: PolicyBook,
        feed: SnapshotFeed,
        agents: AgentClients,
        *,
        clock: Clock,
        tracer: trace.Tracer | None = None,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._policies = policies
        self._feed = feed
        self._agents = agents
        self._clock = clock
        self._tracer = tracer or trace.get_tracer(__name__)
        self._metrics = metrics
        self._controls: dict[str, InstanceControl] = {}
        # Instances as the router last described them with a placement.
        self._notices = NoticeBoard(settings.placement_hold_ms / 1000.0)
        # Per instance, the SLO targets each router's requests on it are held to (SLO classes).
        self._served = ServedReports(SERVED_TTL_S)
        self._wake = asyncio.Event()
        self._blind = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Telemetry's time of this controller's last SetSlo, and an SLO being adopted.
        self._slo_published_at_s = -math.inf
        self._adopting_slo: SloTarget | None = None

    @property
    def blind(self) -> bool:
        """Telemetry has been unreachable too long: clock control is paused."""
        return self._blind

    @property
    def controls(self) -> Mapping[str, InstanceControl]:
        """Instances seen in the latest snapshot, by id (sorted)."""
        return dict(sorted(self._controls.items()))

    def wake(self) -> None:
        """Run a tick now (a new policy or SLO, a lost lease) instead of at the next interval."""
        self._wake.set()

    # --- deciding ------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick every control interval (and on wake-ups), until cancelled.

        Ticks are regular rather than per snapshot: policies count ticks (hysteresis), and the
        watch stream delivers at the same interval anyway.
        """
        while True:
            try:
                self.tick(self._clock())
            except Exception:  # a bug in one tick must not end control (leases would lapse)
                _LOG.exception("control tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.control_interval_s)
            self._wake.clear()

    def tick(self, now_s: float) -> None:
        """Decide for every instance of the latest snapshot; start the SetClocks that differ."""
        if self._feed.is_stale(now_s, self._settings.telemetry_stale_after_ms / 1000.0):
            self._go_blind()
            return
        view = self._feed.latest
        if view is None:
            return
        if self._blind:
            self._blind = False
            _LOG.info("telemetry is back; resuming clock control")
        self._follow_cluster_slo(view.snapshot)
        self._sync_instances(view)
        for state in view.snapshot.states():
            control = self._controls[state.instance_id]
            if state.sm_clock_mhz > 0:
                control.current_sm_clock_mhz = state.sm_clock_mhz
            if control.controllable and control.applying is None:
                self._decide(control, self._newest(state), now_s)

    def slo_published(self, set_at_s: float) -> None:
        """This controller's SetSlo reached telemetry at ``set_at_s`` (telemetry's clock):
        snapshots taken before still show the old SLO and must not turn it back."""
        self._slo_published_at_s = max(self._slo_published_at_s, set_at_s)

    def _follow_cluster_slo(self, snapshot: ClusterSnapshot) -> None:
        """Steer to the cluster SLO telemetry holds (its one owner); a telemetry that says
        none leaves the configured SLO."""
        cluster_slo = snapshot.cluster_slo
        if cluster_slo is None or cluster_slo == self._policies.slo:
            return
        if snapshot.now_s < self._slo_published_at_s or cluster_slo == self._adopting_slo:
            return
        self._adopting_slo = cluster_slo
        task = asyncio.create_task(self._adopt_slo(cluster_slo))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _adopt_slo(self, slo: SloTarget) -> None:
        try:
            previous = await self._policies.set_slo(slo)
        except VoltanaError as error:
            _LOG.error("cannot steer to the cluster SLO %s: %s", slo, error)
            return
        finally:
            self._adopting_slo = None
        _LOG.info(
            "cluster SLO from telemetry: TTFT %g ms, ITL %g ms (was TTFT %g ms, ITL %g ms)",
            slo.ttft_ms,
            slo.itl_ms,
            previous.ttft_ms,
            previous.itl_ms,
        )
        self.wake()

    def _newest(self, reported: InstanceState) -> InstanceState:
        """The report, or the router's placement notice while it stands (control/notices.py)."""
        newest = self._notices.newest(reported, reported.instance_id)
        assert newest is not None
        return newest

    def on_served(self, router_id: str, served: Mapping[str, Served], now_s: float) -> None:
        """A router says what its requests on these instances are held to; a change of what
        an instance's law runs against is decided at once (a loose-only instance may slow
        down; a tight request on it raises it)."""
        changed = False
        for instance_id, summary in served.items():
            changed |= self._served.report(router_id, instance_id, summary, now_s)
        if changed:
            self.wake()

    def law_target(self, instance_id: str, now_s: float) -> SloTarget:
        """The SLO targets the instance's clock law runs against: the tightest its requests
        are held to, the cluster SLO when it serves none (control/serving.py)."""
        return self._served.law_target(instance_id, self._policies.slo, now_s)

    async def on_placement(self, states: Sequence[InstanceState], now_s: float) -> list[int]:
        """A request was just placed on these instances, as the router sees them (in-flight
        requests included): decide their clocks now, and return once any new clock is
        applied (the router dispatches then). Per instance: the clock now locked, MHz (0 when
        unknown or not controllable)."""
        return list(await asyncio.gather(*(self._placed(state, now_s) for state in states)))

    async def _placed(self, state: InstanceState, now_s: float) -> int:
        control = self._controls.get(state.instance_id)
        if control is None or not control.controllable or self._blind:
            return 0
        view = dataclasses.replace(state, observed_at_s=now_s)
        self._notices.notice(view)
        if control.applying is not None:  # a change in flight: decide after it lands
            with contextlib.suppress(Exception):
                await asyncio.shield(control.applying)
        if control.applying is None:
            self._decide(control, view, now_s)
        if control.applying is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(control.applying)
        return control.confirmed_sm_clock_mhz or control.current_sm_clock_mhz

    def _go_blind(self) -> None:
        # Without state the policies would steer blind: stop, let leases lapse (agents go
        # back to default clocks), and apply afresh once telemetry answers again.
        if not self._blind:
            _LOG.warning(
                "telemetry unreachable for %d ms; pausing clock control (leases will lapse)",
                self._settings.telemetry_stale_after_ms,
            )
            self._blind = True
        for control in self._controls.values():
            control.lease_held = False
            control.confirmed_sm_clock_mhz = None

    def _sync_instances(self, view: ClusterView) -> None:
        """Track new instances, drop vanished ones, follow endpoint changes."""
        snapshot = view.snapshot
        states: dict[str, InstanceState] = {
            **snapshot.prefill,
            **snapshot.decode,
            **snapshot.unified,
        }
        for instance_id in list(self._controls):
            if instance_id not in states:
                _LOG.info("instance %s left; no longer controlling it", instance_id)
                gone = self._controls.pop(instance_id)
                self._notices.forget(instance_id)
                self._served.forget(instance_id)
                if self._metrics is not None:
                    self._metrics.forget(instance_id, gone.phase)
        for instance_id, state in states.items():
            info = view.endpoints.get(instance_id)
            agent_address = info.agent_address if info is not None else ""
            gpu_index = info.gpu_index if info is not None else 0
            gpus = info.gpus if info is not None else ()
            control = self._controls.get(instance_id)
            if control is not None and (
                control.agent_address,
                control.gpu_index,
                control.gpus,
                control.phase,
            ) == (agent_address, gpu_index, gpus, state.phase):
                control.gpu_key = state.gpu_key
                continue
            self._controls[instance_id] = self._new_control(state, info)

    def _new_control(self, state: InstanceState, info: InstanceInfo | None) -> InstanceControl:
        control = InstanceControl(
            instance_id=state.instance_id,
            phase=state.phase,
            gpu_key=state.gpu_key,
            agent_address=info.agent_address if info is not None else "",
            gpu_index=info.gpu_index if info is not None else 0,
            decisions=deque(maxlen=self._settings.decision_history),
            gpus=info.gpus if info is not None else (),
        )
        if control.controllable:
            _LOG.info(
                "controlling %s %s on %s",
                control.phase.value,
                control.instance_id,
                ", ".join(f"agent {g.agent_address} GPU {g.gpu_index}" for g in control.gpu_refs),
            )
        else:
            _LOG.warning(
                "instance %s has no node agent registered; cannot control its clock",
                state.instance_id,
            )
        return control

    def _decide(self, control: InstanceControl, state: InstanceState, now_s: float) -> None:
        try:
            policy = self._policies.policy_for(control.phase, control.gpu_key)
            decision = policy.decide(state, self.law_target(control.instance_id, now_s), now_s)
        except Exception as error:  # one instance's policy failure must not stop the others
            message = f"{type(error).__name__}: {error}"
            if message != control.policy_error:
                _LOG.error("policy failed for %s: %s", control.instance_id, message)
                control.policy_error = message
            return
        control.policy_error = ""
        if self._metrics is not None:
            self._metrics.on_decision(control.instance_id, control.phase, decision)
        if not needs_clock_command(
            decision.sm_clock_mhz,
            control.confirmed_sm_clock_mhz,
            lease_held=control.lease_held,
            now_s=now_s,
            retry_at_s=control.retry_at_s,
        ):
            return
        previous_mhz = (
            control.confirmed_sm_clock_mhz
            if control.confirmed_sm_clock_mhz is not None
            else control.current_sm_clock_mhz
        )
        control.target_sm_clock_mhz = decision.sm_clock_mhz
        task = asyncio.create_task(self._apply(control, decision, previous_mhz, now_s))
        control.applying = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- applying ------------------------------------------------------------------------

    async def _apply(
        self,
        control: InstanceControl,
        decision: ClockDecision,
        previous_mhz: int,
        decided_at_s: float,
    ) -> None:
        settings = self._settings
        attributes = {
            "voltana.instance.id": control.instance_id,
            "voltana.instance.phase": control.phase.value,
            "voltana.policy": self._policies.policy_name(control.phase),
            "voltana.gpu.sm_clock.previous_mhz": previous_mhz,
            "voltana.gpu.sm_clock.target_mhz": decision.sm_clock_mhz,
            "voltana.reason": decision.reason,
            "voltana.agent.address": control.agent_address,
            "voltana.gpu.index": control.gpu_index,
        }
        started_s = time.perf_counter()
        try:
            with self._tracer.start_as_current_span(
                "voltana.controller.clock_change", attributes=attributes
            ) as span:
                try:
                    applied = await self._agents.set_group_clocks(
                        control.gpu_refs,
                        decision.sm_clock_mhz,
                        settings.lease_ttl_ms,
                        decision.reason,
                    )
                except VoltanaError as error:
                    span.set_status(Status(StatusCode.ERROR, str(error)))
                    span.record_exception(error)
                    self._record_failure(control, decision, previous_mhz, decided_at_s, error)
                    if self._metrics is not None:
                        self._metrics.on_clock_change(
                            control.instance_id,
                            control.phase,
                            decision,
                            applied_mhz=None,
                            duration_s=time.perf_counter() - started_s,
                        )
                    return
                span.set_attributes(
                    {
                        "voltana.gpu.sm_clock.applied_mhz": applied.applied_sm_clock_mhz,
                        "voltana.gpu.sm_clock.measured_mhz": applied.measured_sm_clock_mhz,
                        "voltana.gpu.sm_clock.clamped": applied.clamped,
                    }
                )
            if self._metrics is not None:
                self._metrics.on_clock_change(
                    control.instance_id,
                    control.phase,
                    decision,
                    applied_mhz=applied.applied_sm_clock_mhz,
                    duration_s=time.perf_counter() - started_s,
                )
            if control.failures:
                _LOG.info("agent %s answers again", control.agent_address)
            control.failures = 0
            control.retry_at_s = 0.0
            control.confirmed_sm_clock_mhz = decision.sm_clock_mhz
            control.lease_held = True
            control.lease_renewed_at_s = self._clock()
            control.current_sm_clock_mhz = (
                applied.measured_sm_clock_mhz or applied.applied_sm_clock_mhz
            )
            control.decisions.append(
                DecisionRecord(
                    decided_at_s=decided_at_s,
                    sm_clock_mhz=decision.sm_clock_mhz,
                    previous_sm_clock_mhz=previous_mhz,
                    reason=decision.reason,
                    applied=True,
                    applied_sm_clock_mhz=applied.applied_sm_clock_mhz,
                    measured_sm_clock_mhz=applied.measured_sm_clock_mhz,
                )
            )
            if applied.measured_sm_clock_mhz not in (0, applied.applied_sm_clock_mhz):
                _LOG.warning(
                    "%s: agent locked %d MHz but reads back %d MHz",
                    control.instance_id,
                    applied.applied_sm_clock_mhz,
                    applied.measured_sm_clock_mhz,
                )
            _LOG.info(
                "%s: %d -> %d MHz (%s)",
                control.instance_id,
                previous_mhz,
                applied.applied_sm_clock_mhz,
                decision.reason,
            )
        finally:
            control.applying = None

    def _record_failure(
        self,
        control: InstanceControl,
        decision: ClockDecision,
        previous_mhz: int,
        decided_at_s: float,
        error: VoltanaError,
    ) -> None:
        settings = self._settings
        control.failures += 1
        # Next tick first, then doubling pauses: a dead agent is not hammered every 50 ms.
        backoff_s = min(
            settings.control_interval_s * 2 ** (control.failures - 1),
            settings.retry_backoff_max_ms / 1000.0,
        )
        control.retry_at_s = self._clock() + backoff_s
        control.confirmed_sm_clock_mhz = None
        if isinstance(error, FailedPreconditionError):
            control.lease_held = False  # someone else holds this GPU
        control.decisions.append(
            DecisionRecord(
                decided_at_s=decided_at_s,
                sm_clock_mhz=decision.sm_clock_mhz,
                previous_sm_clock_mhz=previous_mhz,
                reason=decision.reason,
                applied=False,
                error=str(error) or type(error).__name__,
            )
        )
        log = _LOG.warning if control.failures == 1 else _LOG.debug
        log(
            "%s: SetClocks %d MHz on %s failed (attempt %d; retry in %.2f s): %s",
            control.instance_id,
            decision.sm_clock_mhz,
            control.agent_address,
            control.failures,
            backoff_s,
            error,
        )

    # --- leases --------------------------------------------------------------------------

    async def run_lease_renewals(self) -> None:
        """Renew every held lease each ttl/3, until cancelled."""
        while True:
            await asyncio.sleep(self._settings.lease_renew_interval_s)
            try:
                await self.renew_leases()
            except Exception:  # keep renewing whatever happened in one round
                _LOG.exception("lease renewal round failed")

    async def renew_leases(self) -> None:
        now_s = self._clock()
        if self._feed.is_stale(now_s, self._settings.telemetry_stale_after_ms / 1000.0):
            return  # blind: let the leases lapse on purpose
        held = [c for c in self._controls.values() if c.lease_held and c.applying is None]
        await asyncio.gather(*(self._renew(control) for control in held))

    async def _renew(self, control: InstanceControl) -> None:
        settings = self._settings
        try:
            await self._agents.renew_group_lease(control.gpu_refs, settings.lease_ttl_ms)
        except (FailedPreconditionError, NotFoundError) as error:
            _LOG.warning("%s: lease lost (%s); applying again", control.instance_id, error)
            self._count_renewal("lost")
            self._lose_lease(control)
        except VoltanaError as error:
            expired = self._clock() - control.lease_renewed_at_s >= settings.lease_ttl_ms / 1000.0
            _LOG.warning(
                "%s: cannot renew lease on %s: %s%s",
                control.instance_id,
                control.agent_address,
                error,
                " (lease has expired)" if expired else "",
            )
            self._count_renewal("failed")
            if expired:
                self._lose_lease(control)
        else:
            self._count_renewal("renewed")
            control.lease_renewed_at_s = self._clock()

    def _count_renewal(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.on_renewal(result)

    def _lose_lease(self, control: InstanceControl) -> None:
        control.lease_held = False
        control.confirmed_sm_clock_mhz = None
        self.wake()

    # --- stopping ------------------------------------------------------------------------

    async def release(self, *, reset_clocks: bool) -> None:
        """Cancel pending SetClocks; with ``reset_clocks``, ask agents to reset held GPUs."""
        # A SetClocks cut short here may have locked its GPUs already (the agent finishes
        # what it started): reset those too, though no reply said the lease was ours.
        in_flight = {c.instance_id for c in self._controls.values() if c.applying is not None}
        tasks, self._tasks = list(self._tasks), set()
        await cancel_and_wait(tasks)
        if not reset_clocks:
            return
        held = [c for c in self._controls.values() if c.lease_held or c.instance_id in in_flight]
        results = await asyncio.gather(
            *(self._agents.reset_group_clocks(c.gpu_refs, "controller stopping") for c in held),
            return_exceptions=True,
        )
        for control, result in zip(held, results, strict=True):
            control.lease_held = False
            if isinstance(result, BaseException):
                _LOG.info(
                    "%s: courtesy clock reset failed (the lease will lapse): %s",
                    control.instance_id,
                    result,
                )
