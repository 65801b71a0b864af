"""A plain `pip install` of the project carries the generated clients: no codegen needed."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

from tests.support.net import PYTHON, ROOT


def built_wheel(source: Path, wheels: Path) -> Path:
    subprocess.run(
        [
            PYTHON,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = wheels.glob("grpc_platform-*.whl")
    return wheel


def test_wheel_contains_and_serves_generated_clients(tmp_path: Path) -> None:
    wheel = built_wheel(ROOT, tmp_path / "wheels")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "ledger/v1/accounts_platform.py",
        "ledger/v1/accounts_pb2.py",
        "ledger/v1/accounts_pb2.pyi",
        "buf/validate/validate_pb2.py",
        "clients/invoker.py",
        "server/main.py",
    ):
        assert expected in names, expected
    assert not any(name.startswith(("tests/", "tools/", "bench/")) for name in names)

    # Installed on its own (dependencies from this environment), away from the checkout.
    target = tmp_path / "site"
    subprocess.run(
        [
            PYTHON,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import ledger.v1.accounts_platform as m;"
        "from ledger.v1.accounts_platform import AccountsClient;"
        "print(m.__file__); print(m.ACCOUNTS_METHODS['Withdraw'].idempotency.name)"
    )
    result = subprocess.run(
        [PYTHON, "-c", probe, str(target)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    where, idempotency = result.stdout.split()
    assert where.startswith(str(target))
    assert idempotency == "IDEMPOTENT"


def test_a_contract_package_added_later_ships_without_an_edit(tmp_path: Path) -> None:
    """`make codegen` of a new contract package writes it to gen/, and a new service is a
    package under services/ (README, Writing a service); nothing lists packages."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("server", "clients", "interceptors", "durable", "codegen", "services", "gen"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    added = source / "gen" / "greeter" / "v1"
    added.mkdir(parents=True)
    for init in (added.parent / "__init__.py", added / "__init__.py"):
        init.write_text("")
    (added / "greeter_pb2.py").write_text("")
    service = source / "services" / "greeter"
    service.mkdir()
    (service / "__init__.py").write_text("")
    (service / "app.py").write_text("")
    names = set(zipfile.ZipFile(built_wheel(source, tmp_path / "wheels")).namelist())
    assert "greeter/v1/greeter_pb2.py" in names
    assert "services/greeter/app.py" in names
    assert "ledger/v1/accounts_platform.py" in names
