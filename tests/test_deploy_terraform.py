"""Terraform, checked offline: formatting by the real binary, properties by python-hcl2.

No provider can be downloaded here, so `terraform validate` and `plan` cannot
run; `terraform fmt -check` and these property tests can, and show that their
checks catch mutations.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest

from tests.support.net import ROOT

TERRAFORM = ROOT / ".venv-deploy" / "bin" / "terraform"
TREE = ROOT / "terraform"
# Statements allowed to name "*", and why. Everything else must be concrete.
WILDCARD_STATEMENTS = {
    # A KMS key policy's "*" resource means "this key"; root delegation to IAM.
    "AccountAdministration": "key policy: root delegation, resource is the key itself",
    # AWS offers no resource-level permissions for these Describe calls.
    "DescribeOnly": "ec2/elb Describe* support no resource-level permissions",
    # The controller names load balancers at run time; a tag condition scopes them.
    "ManageTaggedLoadBalancers": "ARNs made at run time, limited by a tag condition",
}


ALL_OF_A_SERVICE = re.compile(r"arn:[^:]*:[^:]*:[^:]*:[^:]*:\*")


def clean(value: Any) -> Any:
    """python-hcl2 keeps quotes and markers; strip them."""
    if isinstance(value, dict):
        return {
            clean(key): clean(item)
            for key, item in value.items()
            if key not in ("__comments__", "__is_block__")
        }
    if isinstance(value, list):
        return [clean(item) for item in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parsed(tree: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(tree.rglob("*.tf")):
        with path.open() as handle:
            yield path, clean(hcl2.load(handle))


def blocks(tree: Path, section: str, kind: str) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    for path, document in parsed(tree):
        for entry in document.get(section, []):
            for name, body in entry.get(kind, {}).items():
                yield path, name, body


def statements(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A policy document's statements, those of `dynamic "statement"` blocks included."""
    yield from document.get("statement", [])
    for dynamic in document.get("dynamic", []):
        yield from dynamic.get("statement", {}).get("content", [])


def problems(tree: Path) -> list[str]:
    found = []
    for path, name, table in blocks(tree, "resource", "aws_dynamodb_table"):
        if table.get("point_in_time_recovery", [{}])[0].get("enabled") is not True:
            found.append(f"{path.name}:{name}: DynamoDB table without point-in-time recovery")
        sse = table.get("server_side_encryption", [{}])[0]
        if sse.get("enabled") is not True or not sse.get("kms_key_arn"):
            found.append(f"{path.name}:{name}: DynamoDB table without KMS encryption")
        if "ttl" not in table:
            found.append(f"{path.name}:{name}: DynamoDB table without a TTL setting")
    for path, name, queue in blocks(tree, "resource", "aws_sqs_queue"):
        if not queue.get("kms_master_key_id"):
            found.append(f"{path.name}:{name}: SQS queue without KMS encryption")
        if "dead" not in name and "redrive_policy" not in queue:
            found.append(f"{path.name}:{name}: SQS queue without a dead-letter queue")
    alarmed = {
        (alarm.get("metric_name"), str(alarm.get("dimensions", {}).get("QueueName", "")))
        for _, _, alarm in blocks(tree, "resource", "aws_cloudwatch_metric_alarm")
    }
    for path, name, _ in blocks(tree, "resource", "aws_sqs_queue"):
        queue_name = f"${{aws_sqs_queue.{name}.name}}"
        if "dead" in name and ("ApproximateNumberOfMessagesVisible", queue_name) not in alarmed:
            found.append(f"{path.name}:{name}: dead-letter queue without an alarm on its depth")
        if "dead" not in name and ("ApproximateAgeOfOldestMessage", queue_name) not in alarmed:
            found.append(f"{path.name}:{name}: queue without an alarm on unconsumed messages")
    for path, name, repo in blocks(tree, "resource", "aws_ecr_repository"):
        if repo.get("image_tag_mutability") != "IMMUTABLE":
            found.append(f"{path.name}:{name}: ECR tags are mutable")
        if repo.get("image_scanning_configuration", [{}])[0].get("scan_on_push") is not True:
            found.append(f"{path.name}:{name}: ECR does not scan on push")
    for path, name, document in blocks(tree, "data", "aws_iam_policy_document"):
        for statement in statements(document):
            sid = statement.get("sid", "")
            actions = statement.get("actions", [])
            resources = statement.get("resources", [])
            # A log group's "<arn>:*" (its streams) is concrete; "*" or "arn:...:*" is not.
            wildcard = any("*" in action for action in actions) or any(
                resource == "*" or ALL_OF_A_SERVICE.fullmatch(resource) for resource in resources
            )
            if wildcard and (sid not in WILDCARD_STATEMENTS or "service_role" in str(path)):
                found.append(f"{path.name}:{name}: statement {sid or '(no sid)'} names '*'")
    for path in sorted(tree.rglob("*.tf")):  # inline JSON policies too
        if re.search(r'"?Action"?\s*[:=]\s*"\*"', path.read_text()):
            found.append(f'{path.name}: inline policy with Action "*"')
    return found


def test_terraform_is_formatted() -> None:
    result = subprocess.run(
        [str(TERRAFORM), "fmt", "-check", "-recursive", str(TREE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_terraform_has_the_properties_that_matter() -> None:
    assert problems(TREE) == []
    tables = [name for _, name, _ in blocks(TREE, "resource", "aws_dynamodb_table")]
    queues = [name for _, name, _ in blocks(TREE, "resource", "aws_sqs_queue")]
    assert tables == ["this"]  # one for_each block: every table gets the same settings
    assert set(queues) == {"events", "dead_letter"}


def test_service_roles_name_exact_actions() -> None:
    for _, _, document in blocks(
        TREE / "modules" / "service_role", "data", "aws_iam_policy_document"
    ):
        for statement in statements(document):
            assert all("*" not in action for action in statement.get("actions", []))


# The role input that gives each statement of modules/service_role its resources.
STATEMENT_INPUTS = {
    "Tables": "table_arns",
    "Transactions": "table_arns",
    "SendEvents": "send_queue_arns",
    "ReceiveEvents": "receive_queue_arns",
    "Secrets": "secret_arns",
    "Key": "kms_key_arn",
}


def service_roles() -> dict[str, dict[str, Any]]:
    """The prod environment's service_role module blocks, by name."""
    return {
        name: body
        for _, document in parsed(TREE / "environments" / "prod")
        for module in document.get("module", [])
        for name, body in module.items()
        if name.endswith("_role")
    }


def role_actions(role: str) -> set[str]:
    """The IAM actions the prod role `role` is granted (statements with resources)."""
    inputs = service_roles()[role]
    (document,) = [
        body
        for _, name, body in blocks(
            TREE / "modules" / "service_role", "data", "aws_iam_policy_document"
        )
        if name == "access"
    ]
    return {
        action
        for statement in statements(document)
        if inputs.get(STATEMENT_INPUTS[statement["sid"]])
        for action in statement["actions"]
    }


def test_role_actions_follow_the_role_inputs() -> None:
    events = role_actions("transfers_events_role")
    assert "sqs:ReceiveMessage" in events
    assert "dynamodb:PutItem" in events
    assert "sqs:SendMessage" not in events
    assert "secretsmanager:GetSecretValue" not in events
    assert "secretsmanager:GetSecretValue" in role_actions("transfers_role")


def test_the_feed_consumer_holds_only_what_it_needs() -> None:
    roles = service_roles()
    events = roles["transfers_events_role"]
    assert events["service_account"] == "transfers-events"  # k8s/base/transfers-events
    assert events["table_arns"] == ['${module.data.table_arns["activity"]}']
    assert events["receive_queue_arns"] == ["${module.data.events_queue_arn}"]
    assert not {"secret_arns", "send_queue_arns", "index_arns"} & set(events)
    # Transfers sends the events; it no longer receives them.
    assert "receive_queue_arns" not in roles["transfers_role"]


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "terraform"
    shutil.copytree(TREE, copy)
    return copy


@pytest.mark.parametrize(
    ("module", "old", "new", "expected"),
    [
        (
            "service_role/main.tf",
            'data "aws_iam_policy_document" "access" {\n',
            'data "aws_iam_policy_document" "access" {\n  statement {\n    actions   = ["*"]\n'
            '    resources = ["arn:aws:s3:::bucket"]\n  }\n',
            "names '*'",
        ),
        (
            "service_role/main.tf",
            'resource "aws_iam_role_policy" "access" {',
            'resource "aws_iam_role_policy" "extra" {\n  role = aws_iam_role.this.id\n'
            '  policy = jsonencode({ Statement = [{ "Action": "*", Effect = "Allow", '
            'Resource = "*" }] })\n}\n\nresource "aws_iam_role_policy" "access" {',
            'Action "*"',
        ),
        (
            "service_role/main.tf",
            '"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"',
            '"secretsmanager:*"',
            "names '*'",
        ),
        (
            "data/main.tf",
            "    enabled = true\n  }\n\n  server_side",
            "    enabled = false\n  }\n\n  server_side",
            "point-in-time",
        ),
        (
            "data/main.tf",
            "  redrive_policy = jsonencode({",
            "  redrive_off = jsonencode({",
            "dead-letter",
        ),
        (
            "data/main.tf",
            "QueueName = aws_sqs_queue.dead_letter.name",
            "QueueName = aws_sqs_queue.events.name",
            "without an alarm on its depth",
        ),
        (
            "data/main.tf",
            '"ApproximateAgeOfOldestMessage"',
            '"NumberOfMessagesSent"',
            "without an alarm on unconsumed",
        ),
    ],
)
def test_the_checks_catch_mutations(
    tree_copy: Path, module: str, old: str, new: str, expected: str
) -> None:
    path = tree_copy / "modules" / module
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    assert any(expected in problem for problem in problems(tree_copy))


def test_fmt_catches_a_misformatted_file(tree_copy: Path) -> None:
    path = tree_copy / "modules" / "ecr" / "outputs.tf"
    path.write_text(path.read_text().replace("  value       =", "value="))
    result = subprocess.run(
        [str(TERRAFORM), "fmt", "-check", "-recursive", str(tree_copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
