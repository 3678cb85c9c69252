import pytest

from voltana.cli.main import build_parser
from voltana.errors import ConfigError
from voltana.rpc.auth import TOKEN_ENV
from voltana.services.agent import AgentService, AgentSettings

pytestmark = pytest.mark.unit


def test_defaults_are_valid_and_loopback() -> None:
    settings = AgentSettings()
    assert settings.listen_address.startswith("127.0.0.1:")
    assert settings.default_lease_ttl_s == 10.0
    # A lease cannot pin a (low) clock for long; see test_security for the RPC side.
    assert settings.max_lease_ttl_s == 30.0
    assert settings.security.token is None and not settings.security.insecure_no_auth


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
        {"gpu_indices": (0,), "instance_gpu_indices": {"decode-0": 3}},
    ],
)
def test_invalid_settings_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        AgentSettings(**overrides)  # type: ignore[arg-type]


def test_command_line_and_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "s3cret-token-from-the-environment")
    args = build_parser().parse_args(
        [
            "serve", "agent",
            "--backend", "sim",
            "--gpu-index", "0", "--gpu-index", "1",
            "--instance", "prefill-0=0", "--instance", "decode-0=1",
            "--telemetry", "telemetry:50060",
            "--default-lease-ttl-ms", "3000",
            "--node-name", "node-a",
        ]
    )  # fmt: skip
    service = args.build(args)
    assert isinstance(service, AgentService)
    settings = service.settings
    assert settings.backend == "sim"
    assert settings.gpu_indices == (0, 1)
    assert dict(settings.instance_gpu_indices) == {"prefill-0": 0, "decode-0": 1}
    assert settings.telemetry_address == "telemetry:50060"
    assert settings.default_lease_ttl_ms == 3000
    assert settings.node_name == "node-a"
    assert settings.listen_address == "127.0.0.1:50054"  # loopback unless told otherwise
    assert settings.security.token == "s3cret-token-from-the-environment"


def test_bad_instance_binding_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "agent", "--instance", "decode-0"])
