"""A plain `pip install` of the project carries the generated clients: no codegen needed."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

from tests.support.net import PYTHON, ROOT


def test_wheel_contains_and_serves_generated_clients(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
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
            str(ROOT),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = wheels.glob("grpc_platform-*.whl")
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
    assert not any(name.startswith(("tests/", "tools/")) for name in names)

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
