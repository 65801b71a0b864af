"""`make codegen`: idempotent, committed, and drift is caught."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from codegen.generate import GEN_DIR, PROTO_DIR, drift, generate
from codegen.plugin import snake_case
from codegen.validate_descriptors import validate_descriptor_set
from tests.support.net import PYTHON, ROOT


def test_committed_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "codegen", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    generate(PROTO_DIR, first)
    generate(PROTO_DIR, second)
    assert drift(PROTO_DIR, first) == []
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)


def test_changed_proto_without_regeneration_is_drift(tmp_path: Path) -> None:
    protos = tmp_path / "proto"
    shutil.copytree(PROTO_DIR, protos)
    money = protos / "ledger" / "v1" / "money.proto"
    money.write_text(
        money.read_text().replace(
            "message Money {", "message Money {\n  // A new field.\n  string note = 3;"
        )
    )
    result = subprocess.run(
        [PYTHON, "-m", "codegen", "--check", "--proto", str(protos), "--out", str(GEN_DIR)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "ledger/v1/money_pb2.py" in result.stderr
    assert "ledger/v1/money_pb2.pyi" in result.stderr


def test_removed_proto_is_drift_too(tmp_path: Path) -> None:
    protos = tmp_path / "proto"
    shutil.copytree(PROTO_DIR, protos)
    shutil.rmtree(protos / "grpcplatform" / "testing")
    assert "grpcplatform/testing/v1/echo_platform.py" in drift(protos, GEN_DIR)


def test_validate_proto_comes_from_protovalidate() -> None:
    files = validate_descriptor_set().file
    assert files[-1].name == "buf/validate/validate.proto"
    assert {f.name for f in files[:-1]} == set(files[-1].dependency)


def test_snake_case() -> None:
    assert snake_case("OpenAccount") == "open_account"
    assert snake_case("GetHTTPStatus") == "get_http_status"
    assert snake_case("Echo") == "echo"
