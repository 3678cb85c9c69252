#!/usr/bin/env python3
"""Generate the Python gRPC code for protos/voltana/v1 into voltana/v1 (checked in).

Usage:
    python scripts/gen_protos.py           # regenerate voltana/v1/*_pb2*.py[i] and the lock
    python scripts/gen_protos.py --check   # exit 1 and list drift/violations; writes nothing

Output depends only on the .proto files and the installed grpcio-tools / mypy-protobuf
versions, so the check is exact. Runs protoc with ``-Iprotos`` and the repository root as the
output root, so the modules are ``voltana.v1.<name>_pb2`` with absolute imports.

protos/field_numbers.lock.json records every field number and enum value ever published. A
number may never change its name, type or cardinality, and may only disappear when it is
``reserved``; generation refuses protos that break this (wire compatibility across versions).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO_ROOT / "protos"
LOCK_PATH = PROTO_ROOT / "field_numbers.lock.json"
# Path of the generated package relative to both the proto root and the output root.
PACKAGE_DIR = Path("voltana") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
PLUGINS = ("protoc-gen-mypy", "protoc-gen-mypy_grpc")

# {message or enum full name: {number as str: "name type[ repeated]"}}
FieldLock = dict[str, dict[str, str]]


class GenerationError(RuntimeError):
    """protoc or a plugin is missing or failed."""


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The .proto files to compile, relative to ``proto_root``, in a fixed order."""
    package = proto_root / PACKAGE_DIR
    files = sorted(path.relative_to(proto_root) for path in package.glob("*.proto"))
    if not files:
        raise GenerationError(f"no .proto files under {package}")
    return files


def _plugin_path(name: str) -> str:
    # Prefer the plugin installed beside this interpreter (venvs), then PATH.
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise GenerationError(f"{name} not found; pip install mypy-protobuf")
    return found


def _run_protoc(arguments: list[str], proto_root: Path) -> None:
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_root}", *arguments]
    command += [str(path) for path in proto_files(proto_root)]
    result = subprocess.run(command, cwd=proto_root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GenerationError(f"protoc failed ({result.returncode}):\n{result.stderr}")


def generate(out_root: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Compile every proto into ``out_root/voltana/v1``; return the generated files (relative)."""
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    plugins = [f"--plugin={name}={_plugin_path(name)}" for name in PLUGINS]
    outputs = [
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        # Concrete (non-abstract) servicer stubs: a servicer may implement a subset of methods
        # and type-check; the rest answer UNIMPLEMENTED, as the runtime base class does.
        f"--mypy_grpc_out=generate_concrete_servicer_stubs:{out_root}",
    ]
    _run_protoc([*plugins, *outputs], proto_root)
    return generated_files(out_root)


def generated_files(root: Path) -> list[Path]:
    """Generated modules present under ``root/voltana/v1``, relative to ``root``, sorted."""
    package = root / PACKAGE_DIR
    if not package.is_dir():
        return []
    return sorted(
        path.relative_to(root)
        for path in package.iterdir()
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    )


def describe(proto_root: Path = PROTO_ROOT) -> descriptor_pb2.FileDescriptorSet:
    """The parsed protos (only ours, not their imports)."""
    with tempfile.TemporaryDirectory(prefix="voltana-descriptors-") as tmp:
        descriptor_path = Path(tmp) / "descriptors.pb"
        _run_protoc([f"--descriptor_set_out={descriptor_path}"], proto_root)
        return descriptor_pb2.FileDescriptorSet.FromString(descriptor_path.read_bytes())


def _field_entry(field: descriptor_pb2.FieldDescriptorProto) -> str:
    scalar = descriptor_pb2.FieldDescriptorProto.Type.Name(field.type).removeprefix("TYPE_")
    kind = field.type_name.lstrip(".") or scalar.lower()
    repeated = field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    return f"{field.name} {kind}{' repeated' if repeated else ''}"


def _walk_messages(
    prefix: str, messages: Iterable[descriptor_pb2.DescriptorProto]
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    for message in messages:
        full_name = f"{prefix}.{message.name}"
        yield full_name, message
        yield from _walk_messages(full_name, message.nested_type)


def _walk_enums(
    files: descriptor_pb2.FileDescriptorSet,
) -> Iterator[tuple[str, descriptor_pb2.EnumDescriptorProto]]:
    for file in files.file:
        for enum in file.enum_type:
            yield f"{file.package}.{enum.name}", enum
        for full_name, message in _walk_messages(file.package, file.message_type):
            for enum in message.enum_type:
                yield f"{full_name}.{enum.name}", enum


def field_numbers(files: descriptor_pb2.FileDescriptorSet) -> tuple[FieldLock, FieldLock]:
    """(numbers in use, numbers reserved) per message and enum."""
    used: FieldLock = {}
    reserved: FieldLock = {}
    for file in files.file:
        for full_name, message in _walk_messages(file.package, file.message_type):
            used[full_name] = {str(f.number): _field_entry(f) for f in message.field}
            reserved[full_name] = {
                str(number): "reserved"
                for span in message.reserved_range  # end is exclusive for messages
                for number in range(span.start, min(span.end, span.start + 10_000))
            }
    for full_name, enum in _walk_enums(files):
        used[full_name] = {str(value.number): value.name for value in enum.value}
        reserved[full_name] = {
            str(number): "reserved"
            for span in enum.reserved_range  # end is inclusive for enums
            for number in range(span.start, min(span.end + 1, span.start + 10_000))
        }
    return used, reserved


def lock_violations(lock: FieldLock, used: FieldLock, reserved: FieldLock) -> list[str]:
    """Published numbers whose meaning changed or that vanished without being reserved."""
    violations = []
    for full_name, locked_fields in sorted(lock.items()):
        if full_name not in used:
            continue  # a removed message reuses nothing; the lock keeps it in case it returns
        for number, entry in sorted(locked_fields.items(), key=lambda item: int(item[0])):
            now = used[full_name].get(number)
            if now is None and number not in reserved[full_name]:
                violations.append(
                    f"{full_name} = {number} ({entry}) was removed without `reserved {number};`"
                )
            elif now is not None and now != entry:
                violations.append(f"{full_name} = {number} was {entry!r}, is now {now!r}")
    return violations


def merged_lock(lock: FieldLock, used: FieldLock) -> FieldLock:
    """The lock grown by every number now in use, in a stable order."""
    merged = {name: dict(fields) for name, fields in lock.items()}
    for full_name, fields in used.items():
        merged.setdefault(full_name, {}).update(fields)
    return {
        name: dict(sorted(fields.items(), key=lambda item: int(item[0])))
        for name, fields in sorted(merged.items())
    }


def read_lock(path: Path = LOCK_PATH) -> FieldLock:
    if not path.is_file():
        return {}
    lock: FieldLock = json.loads(path.read_text())
    return lock


def lock_text(lock: FieldLock) -> str:
    return json.dumps(lock, indent=2) + "\n"


def drifted_files(repo_root: Path = REPO_ROOT) -> list[str]:
    """Generate into a temp dir and list what differs from the checked-in code and lock."""
    proto_root = repo_root / "protos"
    with tempfile.TemporaryDirectory(prefix="voltana-protos-") as tmp:
        fresh_root = Path(tmp)
        fresh = set(generate(fresh_root, proto_root))
        checked_in = set(generated_files(repo_root))
        drifted = [f"missing: {path}" for path in sorted(fresh - checked_in)]
        drifted += [f"stale (no .proto): {path}" for path in sorted(checked_in - fresh)]
        drifted += [
            f"differs: {path}"
            for path in sorted(fresh & checked_in)
            if not filecmp.cmp(fresh_root / path, repo_root / path, shallow=False)
        ]
    if not (repo_root / PACKAGE_DIR / "__init__.py").is_file():
        drifted.append(f"missing: {PACKAGE_DIR / '__init__.py'}")
    lock_path = proto_root / LOCK_PATH.name
    lock = read_lock(lock_path)
    used, reserved = field_numbers(describe(proto_root))
    drifted += [f"field number: {violation}" for violation in lock_violations(lock, used, reserved)]
    if lock != merged_lock(lock, used):
        drifted.append(f"differs: {lock_path.relative_to(repo_root)} (new fields not recorded)")
    return drifted


def write(repo_root: Path = REPO_ROOT) -> list[Path]:
    """Regenerate in place: refuse field-number violations, drop stale files, write fresh ones."""
    proto_root = repo_root / "protos"
    lock_path = proto_root / LOCK_PATH.name
    lock = read_lock(lock_path)
    used, reserved = field_numbers(describe(proto_root))
    violations = lock_violations(lock, used, reserved)
    if violations:
        raise GenerationError(
            "field numbers must never be reused or changed:\n  " + "\n  ".join(violations)
        )
    for stale in generated_files(repo_root):
        (repo_root / stale).unlink()
    written = generate(repo_root, proto_root)
    init = repo_root / PACKAGE_DIR / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC/protobuf modules for package voltana.v1."""\n')
    lock_path.write_text(lock_text(merged_lock(lock, used)))
    return [*written, lock_path.relative_to(repo_root)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate voltana/v1 from protos/voltana/v1.")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if checked-in code differs from the protos"
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            drifted = drifted_files()
            if drifted:
                print("generated code is out of date with protos/; run scripts/gen_protos.py:")
                print("\n".join(f"  {line}" for line in drifted))
                return 1
            print("generated code is up to date")
            return 0
        for path in write():
            print(f"wrote {path}")
        return 0
    except GenerationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
