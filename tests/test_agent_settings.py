import pytest

from voltana.errors import ConfigError
from voltana.services.agent import AgentSettings
from voltana.services.agent.__main__ import TOKEN_ENV_VAR, settings_from_args

pytestmark = pytest.mark.unit


def test_defaults_are_valid_and_loopback() -> None:
    settings = AgentSettings()
    assert settings.listen_address.startswith("127.0.0.1:")
    assert settings.default_lease_ttl_s == 10.0
    assert settings.auth_token is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"backend": "cuda"},
        {"gpu_indices": (0, 0)},
        {"gpu_indices": (-1,)},
        {"default_lease_ttl_ms": 0},
        {"default_lease_ttl_ms": 10_000, "max_lease_ttl_ms": 5_000},
        {"sample_interval_ms": 0},
        {"readback_timeout_ms": float("nan")},
        {"auth_token": ""},
        {"gpu_indices": (0,), "instance_gpu_indices": {"decode-0": 3}},
    ],
)
def test_invalid_settings_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        AgentSettings(**overrides)  # type: ignore[arg-type]


def test_command_line_and_token_from_environment() -> None:
    settings = settings_from_args(
        [
            "--backend", "sim",
            "--gpu", "0", "--gpu", "1",
            "--instance", "prefill-0=0", "--instance", "decode-0=1",
            "--telemetry", "telemetry:50060",
            "--lease-ttl-ms", "3000",
            "--node-name", "node-a",
        ],
        environ={TOKEN_ENV_VAR: "s3cret"},
    )  # fmt: skip
    assert settings.backend == "sim"
    assert settings.gpu_indices == (0, 1)
    assert dict(settings.instance_gpu_indices) == {"prefill-0": 0, "decode-0": 1}
    assert settings.telemetry_address == "telemetry:50060"
    assert settings.default_lease_ttl_ms == 3000
    assert settings.node_name == "node-a"
    assert settings.auth_token == "s3cret"


def test_bad_instance_binding_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        settings_from_args(["--instance", "decode-0"], environ={})
