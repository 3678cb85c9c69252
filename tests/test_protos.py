"""The voltana.v1 protos: generated code in sync, field numbers never reused, state mirrored."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

from voltana.contract import state
from voltana.rpc import names

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULES = ("common", "agent", "telemetry", "controller", "router")


def _load_gen_protos() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", REPO_ROOT / "scripts/gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_protos = _load_gen_protos()


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """protos/ and the checked-in voltana/v1 in a scratch tree, to edit freely."""
    shutil.copytree(REPO_ROOT / "protos", tmp_path / "protos")
    shutil.copytree(REPO_ROOT / "voltana/v1", tmp_path / "voltana/v1")
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_checked_in_code_matches_protos() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_lists_files_that_drifted(repo_copy: Path) -> None:
    _edit(
        repo_copy / "protos/voltana/v1/common.proto",
        "  double itl_ms = 2;\n",
        "  double itl_ms = 2;\n  // New field.\n  double e2e_ms = 4;\n",
    )
    (repo_copy / "voltana/v1/old_pb2.py").write_text("# left over\n")

    drifted = gen_protos.drifted_files(repo_copy)

    assert "differs: voltana/v1/common_pb2.py" in drifted
    assert "differs: voltana/v1/common_pb2.pyi" in drifted
    assert "stale (no .proto): voltana/v1/old_pb2.py" in drifted
    assert "differs: protos/field_numbers.lock.json (new fields not recorded)" in drifted
    assert not any("agent_pb2" in line for line in drifted)


def test_reusing_a_field_number_is_refused(repo_copy: Path) -> None:
    _edit(
        repo_copy / "protos/voltana/v1/common.proto",
        "double itl_ms = 2;",
        "double tpot_ms = 2;",
    )

    with pytest.raises(gen_protos.GenerationError, match=r"SloTarget = 2 was 'itl_ms double'"):
        gen_protos.write(repo_copy)
    assert any("SloTarget = 2" in line for line in gen_protos.drifted_files(repo_copy))


def test_removing_a_field_needs_reserved(repo_copy: Path) -> None:
    proto = repo_copy / "protos/voltana/v1/common.proto"
    _edit(proto, "  double itl_ms = 2;\n", "")
    with pytest.raises(gen_protos.GenerationError, match="removed without `reserved 2;`"):
        gen_protos.write(repo_copy)

    reserved = '  double ttft_ms = 1;\n  reserved 2;\n  reserved "itl_ms";\n'
    _edit(proto, "  double ttft_ms = 1;\n", reserved)
    gen_protos.write(repo_copy)  # accepted, and the lock keeps remembering number 2
    lock = gen_protos.read_lock(repo_copy / "protos/field_numbers.lock.json")
    assert lock["voltana.v1.SloTarget"]["2"] == "itl_ms double"


@pytest.mark.parametrize("name", MODULES)
def test_generated_modules_import(name: str) -> None:
    messages = importlib.import_module(f"voltana.v1.{name}_pb2")
    importlib.import_module(f"voltana.v1.{name}_pb2_grpc")
    assert messages.DESCRIPTOR.package == "voltana.v1"
    assert messages.DESCRIPTOR.name == f"voltana/v1/{name}.proto"


def test_service_names_match_descriptors() -> None:
    from voltana.v1 import agent_pb2, controller_pb2, router_pb2, telemetry_pb2

    assert agent_pb2.DESCRIPTOR.services_by_name["NodeAgentService"].full_name == (
        names.NODE_AGENT_SERVICE
    )
    assert telemetry_pb2.DESCRIPTOR.services_by_name["TelemetryService"].full_name == (
        names.TELEMETRY_SERVICE
    )
    assert controller_pb2.DESCRIPTOR.services_by_name["ControllerService"].full_name == (
        names.CONTROLLER_SERVICE
    )
    assert router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name == (
        names.ROUTER_SERVICE
    )


def _mirrors(dataclass_type: type, message_type: typing.Any) -> None:
    """Every dataclass field is a proto field; Optional ones have presence in the proto."""
    fields = message_type.DESCRIPTOR.fields_by_name
    hints = typing.get_type_hints(dataclass_type)
    for field in dataclasses.fields(dataclass_type):
        assert field.name in fields, f"{message_type.__name__} lacks {field.name}"
        optional = type(None) in typing.get_args(hints[field.name])
        assert fields[field.name].has_presence == optional, (
            f"{message_type.__name__}.{field.name}: presence should be {optional}"
        )


def test_protos_mirror_the_contracts_state() -> None:
    from voltana.v1 import common_pb2, router_pb2

    _mirrors(state.InstanceState, common_pb2.InstanceState)
    _mirrors(state.SloTarget, common_pb2.SloTarget)
    _mirrors(state.Placement, router_pb2.Placement)
    for phase in state.Phase:
        assert common_pb2.Phase.Value(f"PHASE_{phase.name}") > 0


def test_instance_state_round_trips_with_absent_latencies() -> None:
    from voltana.v1 import common_pb2

    sent = common_pb2.InstanceState(
        instance_id="decode-0",
        phase=common_pb2.PHASE_DECODE,
        sm_clock_mhz=1410,
        running_batch=17,
        kv_tokens_used=123_456,
        recent_itl_ms=0.0,  # measured, and zero: must stay distinguishable from "absent"
        endpoint=common_pb2.InstanceEndpoint(agent_address="127.0.0.1:50051", gpu_index=3),
    )

    received = common_pb2.InstanceState.FromString(sent.SerializeToString())

    assert received == sent
    assert received.HasField("recent_itl_ms")
    assert not received.HasField("recent_ttft_ms")
    assert received.endpoint.gpu_index == 3


def test_generate_request_prompt_is_text_or_token_ids() -> None:
    from voltana.v1 import router_pb2

    request = router_pb2.GenerateRequest(text="hello")
    request.input_ids.ids.extend([1, 2, 3])

    assert request.WhichOneof("prompt") == "input_ids"
    assert not request.HasField("slo")
    assert not request.HasField("max_new_tokens")


def test_registration_carries_every_field_of_the_contracts_instance_info() -> None:
    from voltana.contract import instances
    from voltana.v1 import common_pb2, telemetry_pb2

    registered = {
        *telemetry_pb2.RegisterInstanceRequest.DESCRIPTOR.fields_by_name,
        *common_pb2.InstanceEndpoint.DESCRIPTOR.fields_by_name,
    }
    missing = {f.name for f in dataclasses.fields(instances.InstanceInfo)} - registered
    assert not missing, f"RegisterInstanceRequest lacks {sorted(missing)}"
    assert set(instances.GpuRef._fields) == set(common_pb2.GpuRef.DESCRIPTOR.fields_by_name)
