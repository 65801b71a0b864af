"""The real grpcurl binary against a running service, with no proto files."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.moto import Moto
from tests.support.net import BIN, ServiceProcess, running_service

GRPCURL = str(BIN / "grpcurl")


@pytest.fixture(scope="module")
def accounts(
    tmp_path_factory: pytest.TempPathFactory, shared_moto: Moto
) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp("grpcurl")
    with running_service("accounts", logs, shared_moto.ledger_env()) as service:
        yield service


def grpcurl(service: ServiceProcess, *command: str, data: str | None = None) -> str:
    flags = ["-plaintext", *(["-d", data] if data is not None else [])]
    result = subprocess.run(
        [GRPCURL, *flags, service.target, *command],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_grpcurl_is_the_real_binary() -> None:
    assert Path(GRPCURL).exists()
    version = subprocess.run([GRPCURL, "-version"], capture_output=True, text=True, timeout=10)
    assert "grpcurl" in (version.stdout + version.stderr)


def test_list_shows_services_health_and_reflection(accounts: ServiceProcess) -> None:
    listed = grpcurl(accounts, "list").split()
    assert listed == sorted(
        ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "ledger.v1.Accounts"]
    )
    methods = grpcurl(accounts, "list", "ledger.v1.Accounts").split()
    assert "ledger.v1.Accounts.Withdraw" in methods


def test_describe_shows_the_contract(accounts: ServiceProcess) -> None:
    described = grpcurl(accounts, "describe", "ledger.v1.Accounts.Deposit")
    assert "rpc Deposit ( .ledger.v1.DepositRequest ) returns ( .ledger.v1.DepositResponse )" in (
        described
    )
    message = grpcurl(accounts, "describe", "ledger.v1.DepositRequest")
    assert "string request_id = 1" in message
    assert "buf.validate.field" in message  # the validation rules travel with the contract


def test_call_with_json_body_returns_json(accounts: ServiceProcess) -> None:
    opened = json.loads(
        grpcurl(
            accounts,
            "ledger.v1.Accounts/OpenAccount",
            data='{"request_id": "grpcurl-open-1", "owner": "Ann", "currency_code": "EUR"}',
        )
    )
    account_id = opened["account"]["account_id"]
    assert opened["account"]["state"] == "ACCOUNT_STATE_OPEN"
    body = {
        "request_id": "grpcurl-deposit-1",
        "account_id": account_id,
        "amount": {"currency_code": "EUR", "minor_units": "30"},
    }
    grpcurl(accounts, "ledger.v1.Accounts/Deposit", data=json.dumps(body))
    read = json.loads(
        grpcurl(
            accounts,
            "ledger.v1.Accounts/GetAccount",
            data=json.dumps({"account_id": account_id}),
        )
    )
    assert read["account"]["balance_minor_units"] == "30"  # int64 is a string in JSON


def test_health_check_through_grpcurl(accounts: ServiceProcess) -> None:
    assert json.loads(grpcurl(accounts, "grpc.health.v1.Health/Check")) == {"status": "SERVING"}
    named = grpcurl(
        accounts, "grpc.health.v1.Health/Check", data='{"service": "ledger.v1.Accounts"}'
    )
    assert json.loads(named) == {"status": "SERVING"}
