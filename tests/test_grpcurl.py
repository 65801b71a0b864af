"""The real grpcurl binary against a running service, with no proto files."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api import annotations_pb2  # noqa: F401  # registers google.api.http on MethodOptions
from google.protobuf import descriptor_pool

from grpcplatform.testing.v1 import echo_pb2
from ledger.v1 import accounts_pb2
from server.reflection import SERVICE_NAME, ServedPool
from tests.conftest import StartRuntime
from tests.support import echo
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


async def test_reflection_shows_only_what_the_server_serves(start_runtime: StartRuntime) -> None:
    runtime = await start_runtime(echo.build)
    target = f"127.0.0.1:{runtime.grpc_port}"

    def describe(symbol: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [GRPCURL, "-plaintext", target, "describe", symbol],
            capture_output=True,
            text=True,
            timeout=30,
        )

    served = await asyncio.to_thread(describe, "grpcplatform.testing.v1.EchoService.Echo")
    assert served.returncode == 0, served.stderr
    assert "rpc Echo" in served.stdout
    # This process imported Accounts' contract, as a service calling Accounts does; this
    # server does not serve it, so reflection does not show it.
    hidden = await asyncio.to_thread(describe, "ledger.v1.Accounts")
    assert hidden.returncode != 0
    assert "not found" in hidden.stderr.lower()
    # A failure's details stay readable: grpcurl resolves their types through reflection.
    method = "grpcplatform.testing.v1.EchoService/Echo"
    failed = await asyncio.to_thread(
        subprocess.run,
        [GRPCURL, "-plaintext", "-d", '{"message": "fail:precondition"}', target, method],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Code: FailedPrecondition" in failed.stderr
    assert '"@type":"type.googleapis.com/google.rpc.PreconditionFailure"' in failed.stderr
    assert '"reason":"WRONG_STATE"' in failed.stderr
    assert "not recognized" not in failed.stderr


def test_reflection_lists_extensions_of_the_served_files_only() -> None:
    pool = ServedPool(["grpcplatform.testing.v1.EchoService", SERVICE_NAME])
    options = descriptor_pool.Default().FindMessageTypeByName("google.protobuf.MethodOptions")
    everywhere = {e.full_name for e in descriptor_pool.Default().FindAllExtensions(options)}
    assert "google.api.http" in everywhere  # imported here (googleapis), served by nobody
    served = {e.full_name for e in pool.FindAllExtensions(options)}
    assert served == {"grpcplatform.v1.method_policy"}
    with pytest.raises(KeyError):
        pool.FindFileByName(accounts_pb2.DESCRIPTOR.name)
    assert pool.FindFileByName(echo_pb2.DESCRIPTOR.name).name == echo_pb2.DESCRIPTOR.name
