"""DynamoDB and SQS (moto) stopped under the running ledger, then back: fail fast, recover."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2

from clients.aws import AwsClients, AwsSettings
from clients.channel import ChannelFactory
from clients.errors import details_of, error_info
from ledger.v1 import accounts_pb2, money_pb2, transfers_pb2
from ledger.v1.accounts_platform import AccountsClient
from ledger.v1.transfers_platform import TransfersClient
from server.runtime import Runtime
from services.accounts.app import build as build_accounts
from services.resources import LedgerNames, bootstrap
from services.transfers.app import build as build_transfers
from tests.conftest import StartRuntime
from tests.support.moto import Moto
from tests.support.net import HOST, http_get, ready_status


async def readiness(runtime: Runtime) -> int:
    answer = await asyncio.to_thread(ready_status, runtime.admin.port)
    return 0 if answer is None else answer[0]


async def until_ready_is(runtime: Runtime, status: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await readiness(runtime) != status:
        assert time.monotonic() < deadline, f"/ready never answered {status}"
        await asyncio.sleep(0.1)


async def until_sqs_breaker_closes(runtime: Runtime, timeout: float) -> None:
    """Until the next transfer only the events consumer's long polls call SQS: they are the
    half-open probes, and an empty queue's answer must close the breaker, not re-open it."""
    closed = b'platform_aws_breaker_state{breaker="aws:sqs"} 0.0'
    deadline = time.monotonic() + timeout
    while True:
        _, body = await asyncio.to_thread(http_get, f"http://{HOST}:{runtime.admin.port}/metrics")
        if closed in body:
            return
        assert time.monotonic() < deadline, "the SQS breaker never closed"
        await asyncio.sleep(0.2)


def eur(minor_units: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="EUR", minor_units=minor_units)


async def a_transfer(accounts: AccountsClient, transfers: TransfersClient) -> tuple[str, str]:
    """Opens two accounts, funds one and transfers: the transfer id and its destination."""
    ids = []
    for owner in ("Ada", "Bob"):
        opened = await accounts.open_account(
            accounts_pb2.OpenAccountRequest(
                request_id=str(uuid.uuid4()), owner=owner, currency_code="EUR"
            )
        )
        ids.append(opened.account.account_id)
    await accounts.deposit(
        accounts_pb2.DepositRequest(request_id=str(uuid.uuid4()), account_id=ids[0], amount=eur(9))
    )
    answer = await transfers.create_transfer(
        transfers_pb2.CreateTransferRequest(
            request_id=str(uuid.uuid4()),
            source_account_id=ids[0],
            destination_account_id=ids[1],
            amount=eur(4),
        )
    )
    assert answer.transfer.state == transfers_pb2.TRANSFER_STATE_COMPLETED
    return answer.transfer.transfer_id, ids[1]


async def until_in_feed(transfers: TransfersClient, transfer_id: str, account_id: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        feed = await transfers.list_account_activity(
            transfers_pb2.ListAccountActivityRequest(account_id=account_id)
        )
        if [entry.transfer_id for entry in feed.entries] == [transfer_id]:
            return
        assert time.monotonic() < deadline, "the event never reached the activity feed"
        await asyncio.sleep(0.1)


async def fails_fast(call: object) -> set[str]:
    """The ErrorInfo reasons of 30 calls, each UNAVAILABLE with RetryInfo, well inside 1 s."""
    reasons = set()
    for _ in range(30):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()  # type: ignore[operator]
        assert time.monotonic() - started < 1.0
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert any(isinstance(d, error_details_pb2.RetryInfo) for d in details_of(caught.value))
        info = error_info(caught.value)
        assert info is not None
        reasons.add(info.reason)
    return reasons


async def test_an_outage_fails_fast_and_recovers_without_a_restart(
    moto: Moto, start_runtime: StartRuntime, single_attempt_channels: ChannelFactory
) -> None:
    env = moto.ledger_env(
        CLIENT_AWS_DYNAMODB_BREAKER_OPEN_SECONDS="0.5",
        CLIENT_AWS_SQS_BREAKER_OPEN_SECONDS="0.5",
        CLIENT_AWS_SQS_BREAKER_MINIMUM_CALLS="3",  # the consumer alone opens it
        EVENTS_WAIT_SECONDS="2",  # an empty queue's poll outlasts the 1 s slow-call threshold
    )
    accounts_runtime = await start_runtime(build_accounts, **env)
    target = f"{HOST}:{accounts_runtime.grpc_port}"
    transfers_runtime = await start_runtime(build_transfers, ACCOUNTS_TARGET=target, **env)
    accounts = AccountsClient(single_attempt_channels.connect(target))
    transfers = TransfersClient(
        single_attempt_channels.connect(f"{HOST}:{transfers_runtime.grpc_port}")
    )
    transfer_id, destination = await a_transfer(accounts, transfers)
    await until_in_feed(transfers, transfer_id, destination)

    moto.stop()
    get = accounts_pb2.GetAccountRequest(account_id=destination)
    assert "CIRCUIT_OPEN" in await fails_fast(lambda: accounts.get_account(get, timeout=5))
    create = transfers_pb2.CreateTransferRequest(
        request_id=str(uuid.uuid4()),
        source_account_id=destination,
        destination_account_id=str(uuid.uuid4()),
        amount=eur(1),
    )
    assert "CIRCUIT_OPEN" in await fails_fast(lambda: transfers.create_transfer(create, timeout=5))
    for runtime in (accounts_runtime, transfers_runtime):
        await until_ready_is(runtime, 503, timeout=10)

    moto.start()  # back, but empty: re-create what Terraform (or the bootstrap) made
    clients = AwsClients(AwsSettings(endpoint_url=moto.url))
    await bootstrap(
        await clients.client("dynamodb"),
        await clients.client("sqs"),
        await clients.client("secretsmanager"),
        LedgerNames(env["LEDGER_NAME"]),
        max_receive_count=5,
    )
    await clients.close()
    for runtime in (accounts_runtime, transfers_runtime):
        await until_ready_is(runtime, 200, timeout=15)
    await until_sqs_breaker_closes(transfers_runtime, timeout=60)
    # Everything works again, the events consumer included, with no process restarted.
    transfer_id, destination = await a_transfer(accounts, transfers)
    await until_in_feed(transfers, transfer_id, destination)
