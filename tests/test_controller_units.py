"""Controller pieces without servers: settings validation and the policy book."""

from __future__ import annotations

import pytest

from voltana.contract.state import InstanceState, Phase, SloTarget
from voltana.errors import ConfigError, UnknownNameError
from voltana.services.controller import ControllerSettings, PolicyBook

pytestmark = pytest.mark.unit


def book(policy_name: str = "static-max") -> PolicyBook:
    return PolicyBook(
        policy_name=policy_name,
        slo=SloTarget(),
        gpu_key="a100-80g",
        model_key="llama-3.1-8b",
        tensor_parallel=1,
    )


def idle(phase: Phase, gpu_key: str = "a100-80g") -> InstanceState:
    return InstanceState("i-0", phase, gpu_key, sm_clock_mhz=1410)


@pytest.mark.parametrize(
    "overrides",
    [
        {"telemetry_address": "no-port"},
        {"slo": SloTarget(ttft_ms=0.0, itl_ms=50.0)},
        {"slo": SloTarget(ttft_ms=800.0, itl_ms=float("nan"))},
        {"gpu_key": "tpu-v5"},
        {"model_key": "gpt-17"},
        {"control_interval_ms": 0},
        {"lease_ttl_ms": 100, "control_interval_ms": 50},  # renewals could not keep up
        {"decision_history": 0},
        {"snapshot_mode": "push"},
        {"slo": SloTarget(ttft_ms=1e308, itl_ms=50.0)},  # no SLO, a typo or an attack
    ],
)
def test_settings_reject_invalid_values(overrides: dict[str, object]) -> None:
    values: dict[str, object] = {"telemetry_address": "127.0.0.1:7000", **overrides}
    with pytest.raises(ConfigError):
        ControllerSettings(**values)  # type: ignore[arg-type]


def test_settings_derive_intervals_and_holder() -> None:
    settings = ControllerSettings(telemetry_address="127.0.0.1:7000", lease_ttl_ms=3000)
    assert settings.lease_renew_interval_s == pytest.approx(1.0)
    assert settings.control_interval_s == pytest.approx(0.05)
    assert settings.holder.startswith("controller@")
    named = ControllerSettings(telemetry_address="127.0.0.1:7000", controller_id="ctl-a")
    assert named.holder == "ctl-a"


def test_unknown_policy_fails_at_construction() -> None:
    with pytest.raises(UnknownNameError):
        book("no-such-policy")


async def test_set_policy_per_phase_and_both() -> None:
    policies = book("static-max")
    assert (
        policies.policy_for(Phase.DECODE, "a100-80g")
        .decide(idle(Phase.DECODE), policies.slo, 0.0)
        .sm_clock_mhz
        == 1410
    )

    await policies.set_policy("static:1005", Phase.DECODE)
    assert policies.policy_name(Phase.PREFILL) == "static-max"
    assert policies.policy_name(Phase.DECODE) == "static:1005"
    decode = policies.policy_for(Phase.DECODE, "a100-80g")
    assert decode.decide(idle(Phase.DECODE), policies.slo, 0.0).sm_clock_mhz == 1005

    await policies.set_policy("static:1200/1050", None)
    prefill = policies.policy_for(Phase.PREFILL, "a100-80g")
    decode = policies.policy_for(Phase.DECODE, "a100-80g")
    assert prefill.decide(idle(Phase.PREFILL), policies.slo, 0.0).sm_clock_mhz == 1200
    assert decode.decide(idle(Phase.DECODE), policies.slo, 0.0).sm_clock_mhz == 1050


async def test_rejected_policy_changes_nothing() -> None:
    policies = book("static:1005")
    with pytest.raises(UnknownNameError) as raised:
        await policies.set_policy("static-best", None)  # the simulator's hindsight sweep
    assert "static-best" not in raised.value.valid
    assert "static-max" in raised.value.valid
    with pytest.raises(ConfigError):
        await policies.set_policy("static:1000", None)  # not on the 15 MHz grid
    assert (
        policies.policy_name(Phase.PREFILL) == policies.policy_name(Phase.DECODE) == ("static:1005")
    )


def test_instances_on_another_catalogued_gpu_get_their_own_suite() -> None:
    policies = book("static-max")
    on_h100 = policies.policy_for(Phase.DECODE, "h100-80g")
    assert on_h100.decide(idle(Phase.DECODE, "h100-80g"), policies.slo, 0.0).sm_clock_mhz == 1980
    unknown = policies.policy_for(Phase.DECODE, "mystery-gpu")  # falls back to the default GPU
    assert unknown.decide(idle(Phase.DECODE), policies.slo, 0.0).sm_clock_mhz == 1410


async def test_set_slo_returns_the_previous_one() -> None:
    policies = book("static-max")
    previous = await policies.set_slo(SloTarget(ttft_ms=400.0, itl_ms=30.0))
    assert previous == SloTarget()
    assert policies.slo == SloTarget(ttft_ms=400.0, itl_ms=30.0)


async def test_known_policies_lists_runnable_names_and_templates() -> None:
    names = [info.name for info in await book().known_policies()]
    assert names[0] == "static-max"
    assert "static:<MHz>" in names
    assert "static-best" not in names
    assert all(info.description for info in await book().known_policies())
