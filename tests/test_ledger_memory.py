"""The in-memory ledger through its generated clients: accounts, idempotency, transfers."""

from __future__ import annotations

import uuid

import grpc
import pytest

from clients.channel import ChannelFactory
from clients.errors import error_info
from ledger.v1 import accounts_pb2, money_pb2, transfers_pb2
from ledger.v1.accounts_platform import AccountsClient
from ledger.v1.transfers_platform import TransfersClient
from services.accounts.app import build as build_accounts
from services.transfers.app import build as build_transfers
from tests.conftest import StartRuntime


def eur(minor_units: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="EUR", minor_units=minor_units)


def rid() -> str:
    return str(uuid.uuid4())


@pytest.fixture
async def ledger(
    start_runtime: StartRuntime, channels: ChannelFactory
) -> tuple[AccountsClient, TransfersClient]:
    accounts = await start_runtime(build_accounts)
    target = f"127.0.0.1:{accounts.grpc_port}"
    transfers = await start_runtime(build_transfers, ACCOUNTS_TARGET=target)
    return (
        AccountsClient(channels.connect(target)),
        TransfersClient(channels.connect(f"127.0.0.1:{transfers.grpc_port}")),
    )


async def open_with(accounts: AccountsClient, balance: int, currency: str = "EUR") -> str:
    opened = await accounts.open_account(
        accounts_pb2.OpenAccountRequest(request_id=rid(), owner="Ann", currency_code=currency)
    )
    account_id = opened.account.account_id
    if balance:
        await accounts.deposit(
            accounts_pb2.DepositRequest(
                request_id=rid(),
                account_id=account_id,
                amount=money_pb2.Money(currency_code=currency, minor_units=balance),
            )
        )
    return account_id


async def balance(accounts: AccountsClient, account_id: str) -> int:
    reply = await accounts.get_account(accounts_pb2.GetAccountRequest(account_id=account_id))
    return reply.account.balance_minor_units


async def test_withdraw_more_than_balance_fails_and_changes_nothing(
    ledger: tuple[AccountsClient, TransfersClient],
) -> None:
    accounts, _ = ledger
    account_id = await open_with(accounts, 30)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.withdraw(
            accounts_pb2.WithdrawRequest(request_id=rid(), account_id=account_id, amount=eur(50))
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert info is not None
    assert info.reason == "INSUFFICIENT_FUNDS"
    assert info.domain == "accounts.ledger.internal"
    assert dict(info.metadata) == {
        "balanceMinorUnits": "30",
        "amountMinorUnits": "50",
        "currencyCode": "EUR",
    }
    assert await balance(accounts, account_id) == 30


async def test_repeated_request_id_has_one_effect_and_the_same_answer(
    ledger: tuple[AccountsClient, TransfersClient],
) -> None:
    accounts, _ = ledger
    account_id = await open_with(accounts, 0)
    request = accounts_pb2.DepositRequest(request_id=rid(), account_id=account_id, amount=eur(7))
    first = await accounts.deposit(request)
    second = await accounts.deposit(request)
    assert first == second
    assert await balance(accounts, account_id) == 7
    reused = accounts_pb2.DepositRequest(
        request_id=request.request_id, account_id=account_id, amount=eur(8)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.deposit(reused)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reused_info = error_info(caught.value)
    assert reused_info is not None
    assert reused_info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await balance(accounts, account_id) == 7


async def test_list_accounts_pages_through_everything_once(
    ledger: tuple[AccountsClient, TransfersClient],
) -> None:
    accounts, _ = ledger
    opened = {await open_with(accounts, 0) for _ in range(5)}
    seen: list[str] = []
    token = ""
    while True:
        page = await accounts.list_accounts(
            accounts_pb2.ListAccountsRequest(page_size=2, page_token=token)
        )
        assert len(page.accounts) <= 2
        seen += [account.account_id for account in page.accounts]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(opened)


async def test_transfer_moves_money_through_the_accounts_service(
    ledger: tuple[AccountsClient, TransfersClient],
) -> None:
    accounts, transfers = ledger
    source, destination = await open_with(accounts, 100), await open_with(accounts, 0)
    created = await transfers.create_transfer(
        transfers_pb2.CreateTransferRequest(
            request_id=rid(),
            source_account_id=source,
            destination_account_id=destination,
            amount=eur(60),
        )
    )
    transfer = created.transfer
    assert transfer.state == transfers_pb2.TRANSFER_STATE_COMPLETED
    assert [step.name for step in transfer.history] == ["DEBIT_SOURCE", "CREDIT_DESTINATION"]
    assert (await balance(accounts, source), await balance(accounts, destination)) == (40, 60)
    read = await transfers.get_transfer(
        transfers_pb2.GetTransferRequest(transfer_id=transfer.transfer_id)
    )
    assert read.transfer == transfer


async def test_failed_credit_is_refunded(
    ledger: tuple[AccountsClient, TransfersClient],
) -> None:
    accounts, transfers = ledger
    source = await open_with(accounts, 100)
    dollars = await open_with(accounts, 0, currency="USD")  # credit fails: currency
    created = await transfers.create_transfer(
        transfers_pb2.CreateTransferRequest(
            request_id=rid(),
            source_account_id=source,
            destination_account_id=dollars,
            amount=eur(60),
        )
    )
    transfer = created.transfer
    assert transfer.state == transfers_pb2.TRANSFER_STATE_FAILED
    assert transfer.failure_reason == "CURRENCY_MISMATCH"
    assert [(s.name, s.outcome) for s in transfer.history] == [
        ("DEBIT_SOURCE", "DONE"),
        ("CREDIT_DESTINATION", "FAILED"),
        ("REFUND_SOURCE", "DONE"),
    ]
    assert await balance(accounts, source) == 100
    assert await balance(accounts, dollars) == 0
