"""checkov over the Dockerfile, every rendered overlay and the Terraform: zero failed
checks; every skip is inline, with a reason; and the mutations are caught."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.net import ROOT
from tests.test_deploy_k8s import OVERLAYS, render

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


def checkov(*target: str, framework: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHECKOV),
            *target,
            "--framework",
            framework,
            "--compact",
            "--quiet",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def failed(result: subprocess.CompletedProcess[str]) -> int:
    counts = re.findall(r"Failed checks: (\d+)", result.stdout)
    assert counts, result.stdout + result.stderr
    return sum(int(count) for count in counts)


def test_dockerfile_has_no_failed_checks() -> None:
    result = checkov("-f", str(ROOT / "Dockerfile"), framework="dockerfile")
    assert failed(result) == 0, result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_have_no_failed_checks(overlay: str, tmp_path: Path) -> None:
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(render(overlay))
    result = checkov("-f", str(manifest), framework="kubernetes")
    assert failed(result) == 0, result.stdout


def test_terraform_has_no_failed_checks() -> None:
    result = checkov("-d", str(ROOT / "terraform"), framework="terraform")
    assert failed(result) == 0, result.stdout


def test_every_skip_is_inline_with_a_reason() -> None:
    skips = [
        (path, line)
        for pattern in ("**/*.tf", "k8s/**/*.yaml", "Dockerfile")
        for path in ROOT.glob(pattern)
        for line in path.read_text().splitlines()
        if "checkov:skip" in line
    ]
    for path, line in skips:
        assert re.search(r"checkov:skip=CKV\w*_\d+:\S.{10,}", line), (path, line)


def _no_liveness_probe(container: dict[str, Any]) -> None:
    container.pop("livenessProbe")


def _root_user(container: dict[str, Any]) -> None:
    container["securityContext"]["runAsUser"] = 0


@pytest.mark.parametrize("mutate", [_no_liveness_probe, _root_user])
def test_checkov_catches_manifest_mutations(
    mutate: Callable[[dict[str, Any]], None], tmp_path: Path
) -> None:
    docs = [doc for doc in yaml.safe_load_all(render("prod")) if doc]
    for doc in docs:
        if doc["kind"] == "Deployment":
            mutate(doc["spec"]["template"]["spec"]["containers"][0])
    manifest = tmp_path / "prod.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    assert failed(checkov("-f", str(manifest), framework="kubernetes")) > 0


def test_checkov_catches_a_wildcard_action(tmp_path: Path) -> None:
    tree = tmp_path / "terraform"
    shutil.copytree(ROOT / "terraform", tree)
    role = tree / "modules" / "service_role" / "main.tf"
    role.write_text(
        role.read_text()
        + '\nresource "aws_iam_role_policy" "extra" {\n  role = aws_iam_role.this.id\n'
        '  policy = jsonencode({ Version = "2012-10-17", Statement = [{ "Action": "*", '
        'Effect = "Allow", Resource = "*" }] })\n}\n'
    )
    assert failed(checkov("-d", str(tree), framework="terraform")) > 0
