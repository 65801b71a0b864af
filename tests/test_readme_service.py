"""The README's "Writing a service" holds as written: its service and client examples
pass the project's own lint and strict types, and serve and call as the README says."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import (
    PYTHON,
    ROOT,
    ServiceProcess,
    free_port,
    running_service,
    service_env,
)

README_PORT = "127.0.0.1:50061"  # the example's own port, beside `make run`'s


def readme_example(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    block = readme.split(f"<!-- example: {name} -->\n```python\n", 1)[1]
    return block.split("```", 1)[0]


def readme_grpcurl() -> list[str]:
    """The README's grpcurl call of the example, as arguments."""
    readme = (ROOT / "README.md").read_text()
    (command,) = re.findall(r"`(\.venv/bin/grpcurl -plaintext -d [^`]+GetAccount)`", readme)
    return shlex.split(command)


@pytest.fixture(scope="module")
def example_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service example as the package `readme_service` (the README's
    `services/myservice/app.py`, outside the repository), and the client example."""
    root = tmp_path_factory.mktemp("readme")
    package = root / "readme_service"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "app.py").write_text(readme_example("service"))
    (root / "client.py").write_text(readme_example("client"))
    return root


@pytest.fixture(scope="module")
def example_service(
    example_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    with running_service(
        "readme_service.app:build",
        tmp_path_factory.mktemp("readme-logs"),
        {"PYTHONPATH": str(example_root)},
    ) as service:
        yield service


@pytest.mark.parametrize("example", ["readme_service/app.py", "client.py"])
def test_the_examples_pass_the_projects_lint_and_strict_types(
    example_root: Path, example: str
) -> None:
    path = str(example_root / example)
    config = str(ROOT / "pyproject.toml")
    for command in (
        [str(ROOT / ".venv" / "bin" / "ruff"), "check", "--config", config, path],
        [str(ROOT / ".venv" / "bin" / "ruff"), "format", "--check", "--config", config, path],
        [PYTHON, "-m", "mypy", "--config-file", config, "--no-incremental", path],
    ):
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr


def call(service: ServiceProcess, body: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [service.target if arg == README_PORT else arg for arg in readme_grpcurl()]
    if body is not None:
        command[command.index("-d") + 1] = body
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_the_service_answers_as_the_readme_says(example_service: ServiceProcess) -> None:
    found = call(example_service)
    assert found.returncode == 0, found.stderr
    assert '"balance_minor_units": "100"' in found.stdout

    missing = call(example_service, '{"account_id": "00000000-0000-4000-8000-000000000002"}')
    assert "Code: NotFound" in missing.stderr
    assert "google.rpc.ResourceInfo" in missing.stderr
    # No ERROR_DOMAIN and none from the application: a DNS-like one from SERVICE.
    assert '"domain":"readme-service.app.grpc-platform.internal"' in missing.stderr

    invalid = call(example_service, '{"account_id": "x"}')
    assert "Code: InvalidArgument" in invalid.stderr
    assert '"field":"account_id"' in invalid.stderr


def test_the_client_example_calls_the_service(
    example_root: Path, example_service: ServiceProcess
) -> None:
    script = (example_root / "client.py").read_text().replace(README_PORT, example_service.target)
    result = subprocess.run(
        [PYTHON, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "100"


def test_a_bad_setting_of_the_example_stops_start_up_naming_it(example_root: Path) -> None:
    env = service_env(
        "readme_service.app:build",
        free_port(),
        free_port(),
        PYTHONPATH=str(example_root),
        DEMO_BALANCE="lots",
    )
    result = subprocess.run(
        [PYTHON, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: DEMO_BALANCE must be an integer from 0 to 2147483647, got 'lots'"
    ]
