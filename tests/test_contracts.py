"""Contracts: buf lint passes, and buf breaking catches a breaking change."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from codegen.generate import PROTO_DIR, build_image
from tests.support.net import ROOT

BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
CONFIG = str(PROTO_DIR / "buf.yaml")
BASELINE = PROTO_DIR / "breaking-baseline.binpb"


def buf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BUF), *args], capture_output=True, text=True, timeout=120)


def image_of(protos: Path, tmp_path: Path) -> str:
    image = tmp_path / f"{protos.name}.binpb"
    build_image(protos, image)
    return str(image)


def lint(image: str) -> subprocess.CompletedProcess[str]:
    return buf("lint", image, "--config", CONFIG)  # as `make proto-lint` runs it


@pytest.fixture
def contracts_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "proto"
    shutil.copytree(PROTO_DIR, copy)
    return copy


def test_buf_lint_passes(tmp_path: Path) -> None:
    result = lint(image_of(PROTO_DIR, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_catches_a_violation(contracts_copy: Path, tmp_path: Path) -> None:
    accounts = contracts_copy / "ledger" / "v1" / "accounts.proto"
    accounts.write_text(accounts.read_text().replace("ACCOUNT_STATE_CLOSED", "CLOSED"))
    result = lint(image_of(contracts_copy, tmp_path))
    assert result.returncode != 0
    assert "CLOSED" in result.stdout


def test_buf_lint_covers_a_contract_package_added_later(
    contracts_copy: Path, tmp_path: Path
) -> None:
    added = contracts_copy / "greeter" / "v1"
    added.mkdir(parents=True)
    (added / "greeter.proto").write_text(
        'syntax = "proto3";\npackage greeter.v1;\nmessage bad_name { string X = 1; }\n'
    )
    result = lint(image_of(contracts_copy, tmp_path))
    assert result.returncode != 0
    assert 'Message name "bad_name" should be PascalCase' in result.stdout
    assert "google/" not in result.stdout  # protoc's imports are not ours to lint
    assert "buf/validate" not in result.stdout


def test_current_contracts_are_compatible_with_the_baseline(tmp_path: Path) -> None:
    result = buf(
        "breaking", image_of(PROTO_DIR, tmp_path), "--against", str(BASELINE), "--config", CONFIG
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("int64 minor_units = 2", "int32 minor_units = 2", 'changed type from "int64" to "int32"'),
        (
            "  string memo = 4 [(buf.validate.field).string.max_len = 140];\n",
            "",
            'Previously present field "4"',
        ),
        ("rpc CloseAccount(", "rpc ShutAccount(", 'Previously present RPC "CloseAccount"'),
    ],
)
def test_breaking_change_is_caught(
    contracts_copy: Path, tmp_path: Path, old: str, new: str, expected: str
) -> None:
    changed = False
    for path in (contracts_copy / "ledger" / "v1").glob("*.proto"):
        text = path.read_text()
        if old in text:
            path.write_text(text.replace(old, new, 1))
            changed = True
            break
    assert changed, old
    result = buf(
        "breaking",
        image_of(contracts_copy, tmp_path),
        "--against",
        str(BASELINE),
        "--config",
        CONFIG,
    )
    assert result.returncode != 0
    assert expected in result.stdout, result.stdout


def test_additive_change_is_not_breaking(contracts_copy: Path, tmp_path: Path) -> None:
    money = contracts_copy / "ledger" / "v1" / "money.proto"
    money.write_text(
        money.read_text().replace(
            "message Money {", "message Money {\n  // New.\n  string note = 3;"
        )
    )
    result = buf(
        "breaking",
        image_of(contracts_copy, tmp_path),
        "--against",
        str(BASELINE),
        "--config",
        CONFIG,
    )
    assert result.returncode == 0, result.stdout
