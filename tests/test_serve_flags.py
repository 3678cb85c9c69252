"""`voltana serve` flags come from the settings dataclasses (voltana.flags metadata on each
field): every field says how the command line sets it, each generated flag's default is its
field's (or the one command-line default the field declares), $ENV fills in for a flag not
given, and a bad value is one line and exit code 2."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from voltana.cli import serve_cmd
from voltana.cli.main import OneLineErrorParser, build_parser, main
from voltana.cli.settings_args import add_settings_args, default_of, settings_kwargs
from voltana.engine import SimEngineSettings
from voltana.flags import (
    FIELD_DEFAULT,
    Composed,
    Flag,
    NoFlag,
    cli_spec,
    field_default,
    flag,
    flag_fields,
    no_flag,
)
from voltana.flags.values import positive_float, positive_int
from voltana.services.agent import AgentSettings
from voltana.services.controller import ControllerSettings
from voltana.services.router import RouterSettings
from voltana.services.router.http_limits import HttpLimits
from voltana.services.telemetry import TelemetrySettings
from voltana.services.telemetry.settings import REDIS_URL_ENV
from voltana.stack import EngineNodeSettings
from voltana.stack.sglang_reporter import SglangInstanceSettings

pytestmark = pytest.mark.unit

# What each `voltana serve SERVICE` needs besides its defaults, and where each settings
# dataclass it builds sits in the built service's settings.
REQUIRED = {
    "instance": ["--engine-url", "http://e:30000", "--instance-id", "d", "--mode", "decode"],
}
Part = Callable[[Any], Any]
SETTINGS_OF: dict[str, dict[type[Any], Part]] = {
    "telemetry": {TelemetrySettings: lambda s: s},
    "controller": {ControllerSettings: lambda s: s},
    "router": {RouterSettings: lambda s: s, HttpLimits: lambda s: s.http_limits},
    "agent": {AgentSettings: lambda s: s},
    "engine": {EngineNodeSettings: lambda s: s, SimEngineSettings: lambda s: s.engine},
    "instance": {SglangInstanceSettings: lambda s: s},
}
EVERY_SETTINGS = [cls for parts in SETTINGS_OF.values() for cls in parts]

# Fields `voltana serve` composes with its own helpers, not one flag each: a new field here is a
# deliberate choice, made together with the builder in voltana/cli/serving.
COMPOSED = {
    TelemetrySettings: {"redis_password", "slo", "metrics_listen_address", "security"},
    ControllerSettings: {"slo", "security", "metrics_listen_address"},
    RouterSettings: {
        "slo", "metrics_listen_address", "http_listen_address", "http_limits", "security",
        "api_keys",
    },
    HttpLimits: set(),
    AgentSettings: {"security", "metrics_listen_address"},
    SimEngineSettings: {"host", "port"},
    EngineNodeSettings: {"engine", "agent_metrics_listen_address", "security"},
    SglangInstanceSettings: {"agent_address", "gpu_index", "gpus", "security"},
}  # fmt: skip

# The command line's own defaults, where they differ from the dataclass's: services listen on
# their well-known ports (the dataclasses pick free ones), a deployed agent drives NVML GPUs.
CLI_DEFAULTS = {
    (TelemetrySettings, "listen_address"): "127.0.0.1:50052",
    (ControllerSettings, "listen_address"): "127.0.0.1:50053",
    (ControllerSettings, "telemetry_address"): "127.0.0.1:50052",
    (RouterSettings, "listen_address"): "127.0.0.1:50051",
    (AgentSettings, "listen_address"): "127.0.0.1:50054",
    (AgentSettings, "backend"): "nvml",
    (SimEngineSettings, "bootstrap_port"): 8998,
    (SglangInstanceSettings, "telemetry_address"): "127.0.0.1:50052",
}


def test_the_table_covers_every_service() -> None:
    assert set(SETTINGS_OF) == set(serve_cmd.SERVICES)


@pytest.mark.parametrize("settings", EVERY_SETTINGS, ids=lambda cls: cls.__name__)
def test_every_field_is_a_flag_composed_or_deliberately_not_on_the_command_line(
    settings: type[Any],
) -> None:
    undeclared = [f.name for f in dataclasses.fields(settings) if cli_spec(f) is None]
    assert not undeclared, (
        f"{settings.__name__} fields without flag()/composed()/no_flag() metadata "
        f"(voltana.flags): {undeclared}"
    )
    composed = {f.name for f in dataclasses.fields(settings) if isinstance(cli_spec(f), Composed)}
    assert composed == COMPOSED[settings]


@pytest.mark.parametrize("settings", EVERY_SETTINGS, ids=lambda cls: cls.__name__)
def test_command_line_defaults_are_the_dataclass_defaults_but_the_declared_ones(
    settings: type[Any],
) -> None:
    for f, spec in flag_fields(settings):
        if spec.required:
            continue
        declared = spec.default is not FIELD_DEFAULT
        assert declared == ((settings, f.name) in CLI_DEFAULTS), f.name
        expected = CLI_DEFAULTS[settings, f.name] if declared else field_default(f)
        assert expected is not dataclasses.MISSING, f"{f.name}: a flag needs a default"
        assert default_of(f, spec) == expected, f.name


def expected_default(settings: type[Any], f: dataclasses.Field[Any]) -> Any:
    return CLI_DEFAULTS.get((settings, f.name), field_default(f))


@pytest.mark.parametrize("service", list(SETTINGS_OF))
def test_each_service_builds_with_the_defaults_its_flags_declare(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    args = build_parser().parse_args(
        ["serve", service, "--insecure-no-auth", *REQUIRED.get(service, [])]
    )
    built = args.build(args).settings
    for settings, part in SETTINGS_OF[service].items():
        values = part(built)
        for f, spec in flag_fields(settings):
            if spec.required:
                continue
            assert getattr(values, f.name) == expected_default(settings, f), (service, f.name)


def generated_options(service: str) -> list[tuple[str, Flag]]:
    return [
        (spec.option(f.name, "http-" if settings is HttpLimits else ""), spec)
        for settings in SETTINGS_OF[service]
        for f, spec in flag_fields(settings)
    ]


@pytest.mark.parametrize("service", list(SETTINGS_OF))
def test_help_lists_every_generated_flag_with_its_default(
    service: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", service, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option, _spec in generated_options(service):
        assert option in text, option
    assert text.count("(default:") >= len(generated_options(service)) // 2


def test_telemetry_help_shows_values_and_the_environment_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "telemetry", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default window of aggregates (default: 60.0)" in text
    assert f"(default: ${REDIS_URL_ENV}, else in process memory)" in text
    assert "port 0 = any free port (default: 127.0.0.1:50052)" in text


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert needle in lines[0] and "Traceback" not in err, lines[0]


@pytest.mark.parametrize("service", list(SETTINGS_OF), ids=lambda service: f"serve-{service}")
def test_every_checked_flag_refuses_a_bad_value_in_one_line(
    service: str, capsys: pytest.CaptureFixture[str]
) -> None:
    checked = [(o, s) for o, s in generated_options(service) if s.parse or s.choices]
    assert checked
    for option, _spec in checked:
        argv = ["serve", service, *REQUIRED.get(service, []), option, "bogus"]
        assert_one_line_error(*run_cli(capsys, *argv), option)


def test_a_bad_value_the_settings_refuse_is_one_line_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REDIS_URL_ENV, "ftp://redis:6379")
    code, err = run_cli(capsys, "serve", "telemetry", "--insecure-no-auth")
    assert_one_line_error(code, err, "redis")


def test_the_redis_url_comes_from_the_flag_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def redis_url(*argv: str) -> str | None:
        args = build_parser().parse_args(["serve", "telemetry", "--insecure-no-auth", *argv])
        url: str | None = args.build(args).settings.redis_url
        return url

    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    assert redis_url() is None
    monkeypatch.setenv(REDIS_URL_ENV, "redis://from-env:6379/0")
    assert redis_url() == "redis://from-env:6379/0"
    assert redis_url("--redis-url", "redis://from-flag:6379/1") == "redis://from-flag:6379/1"
    monkeypatch.setenv(REDIS_URL_ENV, "")  # empty = not set
    assert redis_url() is None


# ---- the builder, on a dataclass of its own ----------------------------------------------------

TOY_ENV = "VOLTANA_TEST_TOY_RATE"


@dataclass(frozen=True)
class Toy:
    rate: float = field(
        default=1.5, metadata=flag("requests a second", parse=positive_float, env=TOY_ENV)
    )
    size: int = field(default=4, metadata=flag("batch size", parse=positive_int, name="--batch"))
    paused: bool = field(default=True, metadata=flag("start running", name="--no-pause"))
    tags: tuple[str, ...] = field(
        default=(), metadata=flag("a tag, repeatable", repeat=True, convert=tuple)
    )
    internal: int = field(default=7, metadata=no_flag())


def toy_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="toy")
    add_settings_args(parser, Toy, prefix="toy-")
    return parser


def toy(*argv: str) -> Toy:
    return Toy(**settings_kwargs(toy_parser().parse_args(list(argv)), Toy, prefix="toy-"))


def test_the_builder_reads_flags_switches_and_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOY_ENV, raising=False)
    assert toy() == Toy()
    assert isinstance(cli_spec(dataclasses.fields(Toy)[-1]), NoFlag)
    got = toy("--toy-rate", "3", "--batch", "8", "--no-pause", "--toy-tags", "a", "--toy-tags", "b")
    assert got == Toy(rate=3.0, size=8, paused=False, tags=("a", "b"))


def test_flag_beats_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOY_ENV, "2.5")
    assert toy().rate == 2.5
    assert toy("--toy-rate", "9").rate == 9.0
    assert "$" + TOY_ENV in toy_parser().format_help()


def test_a_bad_environment_value_is_a_one_line_usage_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(TOY_ENV, "-1")
    with pytest.raises(SystemExit) as exit_:
        toy()
    assert_one_line_error(int(exit_.value.code or 0), capsys.readouterr().err, "$" + TOY_ENV)
    # The flag beats the variable: a good flag leaves the bad variable unread.
    assert toy("--toy-rate", "2").rate == 2.0
