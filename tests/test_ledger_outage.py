"""DynamoDB (moto) stopped under a running Accounts service, then back: fail fast, recover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2

from clients.aws import AwsClients, AwsSettings
from clients.channel import ChannelFactory
from clients.errors import details_of, error_info
from durable.dynamo import ensure_tables
from ledger.v1 import accounts_pb2
from ledger.v1.accounts_platform import AccountsClient
from server.runtime import Runtime
from services.accounts.app import build
from services.resources import LedgerNames
from tests.conftest import StartRuntime
from tests.support.moto import FAKE_CREDENTIALS, Moto
from tests.support.net import HOST, ready_status


@pytest.fixture
async def moto(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Moto]:
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    server = Moto(tmp_path_factory.mktemp("outage") / "moto.log")
    server.start()
    yield server
    server.stop()


async def readiness(runtime: Runtime) -> int:
    answer = await asyncio.to_thread(ready_status, runtime.admin.port)
    return 0 if answer is None else answer[0]


async def until_ready_is(runtime: Runtime, status: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await readiness(runtime) != status:
        assert time.monotonic() < deadline, f"/ready never answered {status}"
        await asyncio.sleep(0.1)


async def test_an_outage_fails_fast_and_recovers_without_a_restart(
    moto: Moto, start_runtime: StartRuntime, single_attempt_channels: ChannelFactory
) -> None:
    env = moto.ledger_env(CLIENT_AWS_DYNAMODB_BREAKER_OPEN_SECONDS="0.5")
    runtime = await start_runtime(build, **env)
    assert runtime.admin.port
    client = AccountsClient(single_attempt_channels.connect(f"{HOST}:{runtime.grpc_port}"))
    opened = await client.open_account(
        accounts_pb2.OpenAccountRequest(request_id="before", owner="Ada", currency_code="EUR")
    )
    get = accounts_pb2.GetAccountRequest(account_id=opened.account.account_id)
    assert await readiness(runtime) == 200

    moto.stop()
    reasons = set()
    for _ in range(30):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.get_account(get, timeout=5)
        assert time.monotonic() - started < 1.0  # fails fast, far inside the deadline
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert any(isinstance(d, error_details_pb2.RetryInfo) for d in details_of(caught.value))
        info = error_info(caught.value)
        assert info is not None
        reasons.add(info.reason)
    assert "CIRCUIT_OPEN" in reasons  # the breaker took over from the failing calls
    await until_ready_is(runtime, 503, timeout=10)

    moto.start()  # back, but empty: re-create what Terraform (or the bootstrap) made
    names = LedgerNames(env["LEDGER_NAME"])
    clients = AwsClients(AwsSettings(endpoint_url=moto.url))
    await ensure_tables(await clients.client("dynamodb"), names.tables())
    await clients.close()
    await until_ready_is(runtime, 200, timeout=15)
    reopened = await client.open_account(
        accounts_pb2.OpenAccountRequest(request_id="after", owner="Ada", currency_code="EUR")
    )
    read = await client.get_account(
        accounts_pb2.GetAccountRequest(account_id=reopened.account.account_id)
    )
    assert read.account.owner == "Ada"
