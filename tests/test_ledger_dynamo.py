"""The ledger on DynamoDB (moto in server mode) through its generated clients."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from botocore.exceptions import ClientError
from google.rpc.error_details_pb2 import BadRequest, PreconditionFailure, QuotaFailure
from prometheus_client.parser import text_string_to_metric_families

from clients.aws import AwsClients, AwsSettings, ResilientAwsClient
from clients.channel import ChannelFactory
from clients.errors import details_of, error_info
from durable.saga import Saga
from ledger.v1 import accounts_pb2, money_pb2, transfers_pb2
from ledger.v1.accounts_platform import AccountsClient
from ledger.v1.transfers_platform import TransfersClient
from services.accounts import service as accounts_service
from services.accounts.app import build as build_accounts
from services.accounts.table import conflict, contended
from services.resources import LedgerNames
from services.transfers.app import build as build_transfers
from services.transfers.events import build as build_events
from services.transfers.saga import TransferSaga, payload_of, step_request_id
from services.transfers.service import TRANSFER_IDS
from tests.conftest import StartRuntime
from tests.support.moto import Moto, queue_depth
from tests.support.net import PYTHON, ROOT, http_get
from tests.test_deploy_terraform import role_actions


def eur(minor_units: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="EUR", minor_units=minor_units)


def rid() -> str:
    return str(uuid.uuid4())


class Ledger:
    def __init__(
        self, accounts: AccountsClient, transfers: TransfersClient, transfers_admin: int = 0
    ) -> None:
        self.accounts = accounts
        self.transfers = transfers
        self.transfers_admin = transfers_admin

    async def open(self, balance: int = 0) -> str:
        opened = await self.accounts.open_account(
            accounts_pb2.OpenAccountRequest(request_id=rid(), owner="Ada", currency_code="EUR")
        )
        if balance:
            await self.deposit(opened.account.account_id, balance)
        return opened.account.account_id

    async def deposit(self, account_id: str, amount: int, request_id: str = "") -> None:
        await self.accounts.deposit(
            accounts_pb2.DepositRequest(
                request_id=request_id or rid(), account_id=account_id, amount=eur(amount)
            )
        )

    async def balance(self, account_id: str) -> int:
        got = await self.accounts.get_account(accounts_pb2.GetAccountRequest(account_id=account_id))
        return got.account.balance_minor_units

    async def holds(self, account_id: str) -> list[str]:
        got = await self.accounts.get_account(accounts_pb2.GetAccountRequest(account_id=account_id))
        return list(got.account.hold_ids)

    async def activity(self, account_id: str) -> list[transfers_pb2.ActivityEntry]:
        """The account's whole activity feed, newest first, a page of one at a time."""
        entries: list[transfers_pb2.ActivityEntry] = []
        token = ""
        while True:
            page = await self.transfers.list_account_activity(
                transfers_pb2.ListAccountActivityRequest(
                    account_id=account_id, page_size=1, page_token=token
                )
            )
            entries += page.entries
            token = page.next_page_token
            if not token:
                return entries

    async def close(self, account_id: str) -> accounts_pb2.CloseAccountResponse:
        return await self.accounts.close_account(
            accounts_pb2.CloseAccountRequest(request_id=rid(), account_id=account_id)
        )

    def transfer_request(
        self, source: str, destination: str, amount: int, request_id: str = ""
    ) -> transfers_pb2.CreateTransferRequest:
        return transfers_pb2.CreateTransferRequest(
            request_id=request_id or rid(),
            source_account_id=source,
            destination_account_id=destination,
            amount=eur(amount),
        )


@pytest.fixture
async def ledger(
    start_runtime: StartRuntime, single_attempt_channels: ChannelFactory, shared_moto: Moto
) -> Ledger:
    env = shared_moto.ledger_env()
    accounts = await start_runtime(build_accounts, **env)
    target = f"127.0.0.1:{accounts.grpc_port}"
    transfers = await start_runtime(build_transfers, ACCOUNTS_TARGET=target, **env)
    return Ledger(
        AccountsClient(single_attempt_channels.connect(target)),
        TransfersClient(single_attempt_channels.connect(f"127.0.0.1:{transfers.grpc_port}")),
        transfers.admin.port,
    )


async def failure(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_withdrawing_more_than_the_balance_changes_nothing(ledger: Ledger) -> None:
    account = await ledger.open(balance=30)
    withdraw = accounts_pb2.WithdrawRequest(request_id=rid(), account_id=account, amount=eur(50))
    error = await failure(ledger.accounts.withdraw(withdraw))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(error)
    assert info is not None
    assert info.reason == "INSUFFICIENT_FUNDS"
    assert info.domain == "accounts.ledger.internal"
    assert info.metadata["balanceMinorUnits"] == "30"
    assert info.metadata["amountMinorUnits"] == "50"
    assert await ledger.balance(account) == 30
    # The outcome is recorded: the same request gets the same answer, even once it could pass.
    await ledger.deposit(account, 100)
    again = await failure(ledger.accounts.withdraw(withdraw))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details_of(again) == details_of(error)
    assert await ledger.balance(account) == 130


async def test_a_request_id_reused_with_another_body_is_refused(ledger: Ledger) -> None:
    source, destination = await ledger.open(balance=100), await ledger.open()
    request_id = rid()
    await ledger.deposit(source, 5, request_id)
    reused = await failure(ledger.deposit(source, 6, request_id))
    transfer = ledger.transfer_request(source, destination, 10)
    await ledger.transfers.create_transfer(transfer)
    transfer.amount.minor_units = 11
    reused_transfer = await failure(ledger.transfers.create_transfer(transfer))
    for error in (reused, reused_transfer):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(error)
        assert info is not None
        assert info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await ledger.balance(source) == 95


async def test_twenty_concurrent_duplicates_of_a_transfer_have_one_effect(ledger: Ledger) -> None:
    source, destination = await ledger.open(balance=100), await ledger.open()
    request = ledger.transfer_request(source, destination, 40)
    answers = await asyncio.gather(*(ledger.transfers.create_transfer(request) for _ in range(20)))
    assert len({answer.SerializeToString(deterministic=True) for answer in answers}) == 1
    assert answers[0].transfer.state == transfers_pb2.TRANSFER_STATE_COMPLETED
    assert [step.name for step in answers[0].transfer.history] == [
        "DEBIT_SOURCE",
        "CREDIT_DESTINATION",
    ]
    assert (await ledger.balance(source), await ledger.balance(destination)) == (60, 40)
    assert await ledger.holds(source) == []  # the credit released the debit's hold


async def test_concurrent_writers_lose_no_update(ledger: Ledger) -> None:
    account = await ledger.open(balance=100)
    withdraws = [
        accounts_pb2.WithdrawRequest(request_id=rid(), account_id=account, amount=eur(30))
        for _ in range(6)
    ]
    duplicate = accounts_pb2.WithdrawRequest(request_id=rid(), account_id=account, amount=eur(1))

    async def attempt(call: Callable[[], Awaitable[object]]) -> str:
        try:
            await call()
            return "OK"
        except grpc.aio.AioRpcError as error:
            info = error_info(error)
            return info.reason if info is not None else error.code().name

    outcomes = await asyncio.gather(
        *(attempt(functools.partial(ledger.accounts.withdraw, w)) for w in withdraws),
        *(attempt(lambda: ledger.deposit(account, 2)) for _ in range(10)),
        *(attempt(lambda: ledger.accounts.withdraw(duplicate)) for _ in range(10)),
    )
    debits = outcomes[:6]
    # 100 + 20 - 1 covers at most three withdrawals of 30, and never a negative balance.
    assert debits.count("OK") <= 3
    assert set(debits) <= {"OK", "INSUFFICIENT_FUNDS", "REQUEST_IN_PROGRESS"}
    assert set(outcomes[6:16]) == {"OK"}
    assert set(outcomes[16:]) <= {"OK", "REQUEST_IN_PROGRESS"}
    assert await ledger.balance(account) == 100 + 20 - 1 - 30 * debits.count("OK")


async def test_a_transfer_to_a_closed_account_refunds_the_source(ledger: Ledger) -> None:
    source, closed = await ledger.open(balance=50), await ledger.open()
    await ledger.accounts.close_account(
        accounts_pb2.CloseAccountRequest(request_id=rid(), account_id=closed)
    )
    answer = await ledger.transfers.create_transfer(ledger.transfer_request(source, closed, 20))
    transfer = answer.transfer
    assert transfer.state == transfers_pb2.TRANSFER_STATE_FAILED
    assert transfer.failure_reason == "ACCOUNT_CLOSED"
    assert [(s.name, s.outcome) for s in transfer.history] == [
        ("DEBIT_SOURCE", "DONE"),
        ("CREDIT_DESTINATION", "FAILED"),
        ("REFUND_SOURCE", "DONE"),
    ]
    assert await ledger.balance(source) == 50
    assert await ledger.holds(source) == []  # the refund released the debit's hold
    read = await ledger.transfers.get_transfer(
        transfers_pb2.GetTransferRequest(transfer_id=transfer.transfer_id)
    )
    assert read.transfer == transfer


async def test_a_hold_keeps_an_account_open_until_a_deposit_releases_it(ledger: Ledger) -> None:
    held, other = await ledger.open(balance=50), await ledger.open()
    hold_id = rid()
    withdraw = accounts_pb2.WithdrawRequest(
        request_id=rid(), account_id=held, amount=eur(50), hold_id=hold_id
    )
    assert list((await ledger.accounts.withdraw(withdraw)).account.hold_ids) == [hold_id]
    await ledger.accounts.withdraw(withdraw)  # a repeat places no second hold
    assert await ledger.holds(held) == [hold_id]
    await ledger.deposit(held, 5)
    sharing = accounts_pb2.WithdrawRequest(
        request_id=rid(), account_id=held, amount=eur(5), hold_id=hold_id
    )
    shared = await failure(ledger.accounts.withdraw(sharing))  # one release must free one
    assert shared.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(shared).reason == "HOLD_EXISTS"  # type: ignore[union-attr]
    assert await ledger.balance(held) == 5
    await ledger.accounts.withdraw(
        accounts_pb2.WithdrawRequest(request_id=rid(), account_id=held, amount=eur(5))
    )

    refused = await failure(ledger.close(held))  # empty, but held
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refused)
    assert info is not None
    assert info.reason == "HOLDS_PENDING"
    assert info.metadata["holds"] == "1"
    (violations,) = [d for d in details_of(refused) if isinstance(d, PreconditionFailure)]
    assert [(v.type, v.subject) for v in violations.violations] == [
        ("HOLDS_PENDING", f"accounts/{held}")
    ]
    assert hold_id in violations.violations[0].description

    # A deposit elsewhere releases it in the same write; one naming a hold that is
    # not there changes nothing else.
    release = accounts_pb2.Hold(account_id=held, hold_id=hold_id)
    credit = accounts_pb2.DepositRequest(
        request_id=rid(), account_id=other, amount=eur(50), release_hold=release
    )
    await ledger.accounts.deposit(credit)
    await ledger.accounts.deposit(credit)  # a repeat: one credit
    stray = accounts_pb2.Hold(account_id=held, hold_id=rid())
    await ledger.accounts.deposit(
        accounts_pb2.DepositRequest(
            request_id=rid(), account_id=other, amount=eur(1), release_hold=stray
        )
    )
    assert (await ledger.balance(held), await ledger.balance(other)) == (0, 51)
    assert await ledger.holds(held) == []
    closed = await ledger.close(held)
    assert closed.account.state == accounts_pb2.ACCOUNT_STATE_CLOSED


async def test_release_hold_frees_an_account_without_moving_money(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    held = await ledger.open(balance=80)
    hold_id = rid()
    await ledger.accounts.withdraw(
        accounts_pb2.WithdrawRequest(
            request_id=rid(), account_id=held, amount=eur(50), hold_id=hold_id
        )
    )
    release = accounts_pb2.ReleaseHoldRequest(
        request_id=rid(),
        hold=accounts_pb2.Hold(account_id=held, hold_id=hold_id),
        reason="its transfer was settled by hand",
    )
    first = await ledger.accounts.release_hold(release)
    assert first.released
    assert list(first.account.hold_ids) == []
    assert first.account.balance_minor_units == 30  # no money moved
    assert (await ledger.accounts.release_hold(release)).released  # a repeat: its answer
    again = await ledger.accounts.release_hold(
        accounts_pb2.ReleaseHoldRequest(request_id=rid(), hold=release.hold, reason="again")
    )
    assert not again.released  # a new request finds nothing to release
    assert await ledger.balance(held) == 30
    lines: list[Any] = [r for r in caplog.records if r.getMessage().startswith("hold release")]
    assert [(r.getMessage(), r.hold_id) for r in lines] == [
        (message, hold_id)
        for _ in range(3)
        for message in ("hold release requested", "hold release answered")
    ]
    assert [r.reason for r in lines[0::2]] == [release.reason, release.reason, "again"]
    assert [(r.released, r.repeat) for r in lines[1::2]] == [
        (True, False),
        (True, True),  # answered from the record: nothing written
        (False, False),
    ]

    nowhere = await failure(
        ledger.accounts.release_hold(
            accounts_pb2.ReleaseHoldRequest(
                request_id=rid(), hold=accounts_pb2.Hold(account_id=rid(), hold_id="h"), reason="x"
            )
        )
    )
    assert nowhere.code() == grpc.StatusCode.NOT_FOUND
    unexplained = await failure(
        ledger.accounts.release_hold(
            accounts_pb2.ReleaseHoldRequest(request_id=rid(), hold=release.hold)
        )
    )
    assert unexplained.code() == grpc.StatusCode.INVALID_ARGUMENT
    (violations,) = [d for d in details_of(unexplained) if isinstance(d, BadRequest)]
    assert [v.field for v in violations.field_violations] == ["reason"]


async def test_a_transfer_can_always_refund_an_emptied_source(ledger: Ledger) -> None:
    """The owner of a source a transfer emptied cannot close it before a failed credit is
    refunded: the refund lands instead of failing for good (COMPENSATION_FAILED)."""
    source, destination = await ledger.open(balance=50), await ledger.open()
    transfer = TransferSaga(ledger.accounts)
    request = ledger.transfer_request(source, destination, 50)
    saga = Saga(str(uuid.uuid4()), transfer.kind, payload_of(request))
    debit, credit = transfer.steps
    await debit.action(saga)
    assert await ledger.balance(source) == 0
    refused = await failure(ledger.close(source))
    assert error_info(refused).reason == "HOLDS_PENDING"  # type: ignore[union-attr]

    await ledger.close(destination)  # the credit now fails for good ...
    credit_failed = await failure(credit.action(saga))
    assert transfer.permanent(credit_failed) == "ACCOUNT_CLOSED"
    assert debit.compensation is not None
    await debit.compensation(saga)  # ... and the refund lands
    assert await ledger.balance(source) == 50
    assert await ledger.holds(source) == []


async def test_a_step_refused_as_a_reused_request_is_not_a_permanent_failure(
    ledger: Ledger,
) -> None:
    """A reused request_id means the step went out before with other content: whether it
    took effect is unknown, so the transfer must not refund on it (it may have credited)."""
    account = await ledger.open(balance=10)
    transfer = TransferSaga(ledger.accounts)
    request_id = rid()
    await ledger.accounts.withdraw(
        accounts_pb2.WithdrawRequest(request_id=request_id, account_id=account, amount=eur(1))
    )
    reused = await failure(
        ledger.accounts.withdraw(
            accounts_pb2.WithdrawRequest(request_id=request_id, account_id=account, amount=eur(2))
        )
    )
    assert error_info(reused).reason == "IDEMPOTENCY_KEY_REUSED"  # type: ignore[union-attr]
    assert transfer.permanent(reused) is None
    overdrawn = await failure(
        ledger.accounts.withdraw(
            accounts_pb2.WithdrawRequest(request_id=rid(), account_id=account, amount=eur(99))
        )
    )
    assert transfer.permanent(overdrawn) == "INSUFFICIENT_FUNDS"


async def test_a_transfer_started_before_holds_repeats_its_steps_unchanged(
    ledger: Ledger,
) -> None:
    source, destination = await ledger.open(balance=50), await ledger.open()
    transfer = TransferSaga(ledger.accounts)
    payload = payload_of(ledger.transfer_request(source, destination, 20))
    del payload["hold_source"]  # as a saga stored before holds existed
    saga = Saga(str(uuid.uuid4()), transfer.kind, payload)
    # The debit as the code before holds sent it, its answer lost; this code repeats it.
    await ledger.accounts.withdraw(
        accounts_pb2.WithdrawRequest(
            request_id=step_request_id(saga.saga_id, "DEBIT_SOURCE"),
            account_id=source,
            amount=eur(20),
            memo=f"transfer {saga.saga_id}",
        )
    )
    debit, credit = transfer.steps
    await debit.action(saga)  # the same request: replayed, not IDEMPOTENCY_KEY_REUSED
    await credit.action(saga)
    assert (await ledger.balance(source), await ledger.balance(destination)) == (30, 20)
    assert await ledger.holds(source) == []


async def test_a_hold_on_a_busy_account_is_released_without_losing_its_updates(
    ledger: Ledger,
) -> None:
    held, other = await ledger.open(balance=1000), await ledger.open()
    holds = [rid() for _ in range(8)]
    for hold_id in holds:
        await ledger.accounts.withdraw(
            accounts_pb2.WithdrawRequest(
                request_id=rid(), account_id=held, amount=eur(10), hold_id=hold_id
            )
        )
    releases = [
        ledger.accounts.deposit(
            accounts_pb2.DepositRequest(
                request_id=rid(),
                account_id=other,
                amount=eur(10),
                release_hold=accounts_pb2.Hold(account_id=held, hold_id=hold_id),
            )
        )
        for hold_id in holds
    ]
    # Deposits into the held account race with the releases, which write it too.
    await asyncio.gather(*releases, *(ledger.deposit(held, 1) for _ in range(8)))
    assert await ledger.holds(held) == []
    assert (await ledger.balance(held), await ledger.balance(other)) == (1000 - 80 + 8, 80)


async def test_an_account_takes_a_bounded_number_of_holds(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts_service, "MAX_HOLDS", 2)
    account = await ledger.open(balance=10)

    def held_withdrawal() -> accounts_pb2.WithdrawRequest:
        return accounts_pb2.WithdrawRequest(
            request_id=rid(), account_id=account, amount=eur(1), hold_id=rid()
        )

    await ledger.accounts.withdraw(held_withdrawal())
    await ledger.accounts.withdraw(held_withdrawal())
    retried = held_withdrawal()
    refused = await failure(ledger.accounts.withdraw(retried))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(refused)
    assert info is not None
    assert info.reason == "TOO_MANY_HOLDS"
    (quota,) = [d for d in details_of(refused) if isinstance(d, QuotaFailure)]
    assert quota.violations[0].subject == f"accounts/{account}"
    assert await ledger.balance(account) == 8  # the refused withdrawal took nothing
    holds = await ledger.holds(account)
    assert len(holds) == 2
    # Not recorded as an answer: once a hold is released, the same request goes through.
    await ledger.accounts.deposit(
        accounts_pb2.DepositRequest(
            request_id=rid(),
            account_id=account,
            amount=eur(1),
            release_hold=accounts_pb2.Hold(account_id=account, hold_id=holds[0]),
        )
    )
    await ledger.accounts.withdraw(retried)
    assert await ledger.balance(account) == 8
    assert len(await ledger.holds(account)) == 2


async def test_the_activity_feed_has_each_finished_transfer_once(ledger: Ledger) -> None:
    source, destination = await ledger.open(balance=100), await ledger.open()
    done = await ledger.transfers.create_transfer(ledger.transfer_request(source, destination, 70))
    failed = await ledger.transfers.create_transfer(
        ledger.transfer_request(source, destination, 70)
    )
    assert failed.transfer.failure_reason == "INSUFFICIENT_FUNDS"

    for _ in range(200):
        source_feed = await ledger.activity(source)
        if len(source_feed) == 2:
            break
        await asyncio.sleep(0.05)
    assert [(e.transfer_id, e.state, e.direction) for e in source_feed] == [
        (failed.transfer.transfer_id, transfers_pb2.TRANSFER_STATE_FAILED, "DEBIT"),
        (done.transfer.transfer_id, transfers_pb2.TRANSFER_STATE_COMPLETED, "DEBIT"),
    ]
    assert source_feed[0].failure_reason == "INSUFFICIENT_FUNDS"
    destination_feed = await ledger.activity(destination)
    assert [(e.transfer_id, e.direction, e.amount.minor_units) for e in destination_feed] == [
        (done.transfer.transfer_id, "CREDIT", 70)
    ]


async def test_pages_of_accounts_use_signed_tokens(ledger: Ledger) -> None:
    opened = {await ledger.open() for _ in range(5)}
    seen: list[str] = []
    token = ""
    while True:
        page = await ledger.accounts.list_accounts(
            accounts_pb2.ListAccountsRequest(page_size=2, page_token=token)
        )
        assert len(page.accounts) <= 2
        seen += [account.account_id for account in page.accounts]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(opened)
    first = await ledger.accounts.list_accounts(accounts_pb2.ListAccountsRequest(page_size=2))
    body, _, signature = first.next_page_token.partition(".")
    forged = f"{body[:-2]}{'A' if body[-2] != 'A' else 'B'}{body[-1]}.{signature}"
    for bad in (forged, "not-a-token", first.next_page_token + "x"):
        error = await failure(
            ledger.accounts.list_accounts(accounts_pb2.ListAccountsRequest(page_token=bad))
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, bad


async def test_sagas_and_events_are_counted_on_metrics(ledger: Ledger) -> None:
    source, destination = await ledger.open(balance=10), await ledger.open()
    for amount in (5, 50):  # one completes, one fails
        await ledger.transfers.create_transfer(ledger.transfer_request(source, destination, amount))

    def samples() -> dict[str, float]:
        _, body = http_get(f"http://127.0.0.1:{ledger.transfers_admin}/metrics")
        found = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name.startswith("platform_saga") or sample.name.startswith(
                    "platform_queue"
                ):
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    found[f"{sample.name}{{{labels}}}"] = sample.value
        return found

    def handled(counted: dict[str, float], outcome: str) -> float:
        prefix = f"platform_queue_messages_total{{outcome={outcome},"
        return sum(v for k, v in counted.items() if k.startswith(prefix))

    for _ in range(200):
        counted = await asyncio.to_thread(samples)
        if handled(counted, "processed") == 2:
            break
        await asyncio.sleep(0.05)
    finished = "platform_saga_finished_total{kind=ledger.v1.Transfer,status="
    assert counted[finished + "COMPLETED}"] == 1
    assert counted[finished + "FAILED}"] == 1
    assert handled(counted, "processed") == 2  # both events, each once
    assert handled(counted, "failed") == 0


class AwsCalls:
    """The AWS calls made through the clients of one in-process runtime: those created
    while `owning` is set, i.e. while it starts (the runtimes share the classes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: list[tuple[str, str, dict[str, Any]]] = []
        self.owning = False
        owned: set[int] = set()
        create, call = AwsClients.client, ResilientAwsClient.call

        async def client(clients: AwsClients, service: str) -> ResilientAwsClient:
            made = await create(clients, service)
            if self.owning:
                owned.add(id(made))
            return made

        async def recorded(client: ResilientAwsClient, operation: str, **params: Any) -> Any:
            if id(client) in owned:
                self.made.append((client.service, operation, params))
            return await call(client, operation, **params)

        monkeypatch.setattr(AwsClients, "client", client)
        monkeypatch.setattr(ResilientAwsClient, "call", recorded)

    def actions(self) -> set[str]:
        """As IAM names them: `get_queue_url` on sqs is `sqs:GetQueueUrl`."""
        return {
            f"{service}:{''.join(word.capitalize() for word in operation.split('_'))}"
            for service, operation, _ in self.made
        }


async def test_the_feed_can_be_written_by_a_consumer_process_of_its_own(
    start_runtime: StartRuntime,
    single_attempt_channels: ChannelFactory,
    shared_moto: Moto,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in Kubernetes: Transfers with EVENTS_CONSUMER=false leaves the events on the
    queue; the transfers-events process turns them into the feed, with no AWS call its
    IAM role (terraform: transfers_events_role) does not allow."""
    env = shared_moto.ledger_env()
    accounts = await start_runtime(build_accounts, **env)
    target = f"127.0.0.1:{accounts.grpc_port}"
    transfers = await start_runtime(
        build_transfers, ACCOUNTS_TARGET=target, EVENTS_CONSUMER="false", **env
    )
    ledger = Ledger(
        AccountsClient(single_attempt_channels.connect(target)),
        TransfersClient(single_attempt_channels.connect(f"127.0.0.1:{transfers.grpc_port}")),
    )
    source, destination = await ledger.open(balance=10), await ledger.open()
    done = await ledger.transfers.create_transfer(ledger.transfer_request(source, destination, 4))
    clients = AwsClients(AwsSettings(endpoint_url=shared_moto.url))
    try:
        sqs = await clients.client("sqs")
        queue = await sqs.get_queue_url(QueueName=LedgerNames(env["LEDGER_NAME"]).events_queue)

        async def waiting() -> int:
            return await queue_depth(sqs, queue["QueueUrl"])

        for _ in range(100):  # published by the saga's outbox just after it answered
            if await waiting() == 1:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # longer than a long poll (EVENTS_WAIT_SECONDS=1)
        assert await waiting() == 1  # nobody consumed it
        assert await ledger.activity(source) == []

        calls = AwsCalls(monkeypatch)
        calls.owning = True
        events = await start_runtime(build_events, **{**env, "AWS_BOOTSTRAP": "false"})
        calls.owning = False
        for _ in range(200):
            if len(await ledger.activity(destination)) == 1:
                break
            await asyncio.sleep(0.05)
        (entry,) = await ledger.activity(destination)
        assert (entry.transfer_id, entry.direction) == (done.transfer.transfer_id, "CREDIT")
        assert await waiting() == 0
    finally:
        await clients.close()
    status, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{events.admin.port}/ready")
    assert status == 200
    _, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{events.admin.port}/metrics")
    handled = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "platform_queue_messages_total"
    }
    assert handled == {"processed": 1.0, "failed": 0.0}

    allowed = role_actions("transfers_events_role")
    assert calls.actions() <= allowed, calls.actions() - allowed
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "dynamodb:PutItem"} <= calls.actions()
    names = LedgerNames(env["LEDGER_NAME"])
    made = calls.made
    assert {params["TableName"] for service, _, params in made if service == "dynamodb"} == {
        names.activity  # the role names no other table
    }
    assert {p.get("QueueUrl") or p.get("QueueName") for s, _, p in made if s == "sqs"} == {
        queue["QueueUrl"],
        names.events_queue,
    }


def test_dynamodb_transaction_conflicts_are_retried_not_internal() -> None:
    def cancelled(*codes: str) -> ClientError:
        response: Any = {
            "Error": {"Code": "TransactionCanceledException", "Message": "cancelled"},
            "CancellationReasons": [{"Code": code} for code in codes],
        }
        return ClientError(response, "TransactWriteItems")

    assert conflict(cancelled("None", "TransactionConflict"))
    assert conflict(ClientError({"Error": {"Code": "TransactionInProgressException"}}, "X"))
    assert not conflict(cancelled("ConditionalCheckFailed", "None"))  # a version change
    assert contended().transient  # ABORTED with RetryInfo: the caller may retry


Settle = Callable[..., Awaitable[subprocess.CompletedProcess[str]]]
MakeStuck = Callable[..., Awaitable["StuckTransfer"]]


@dataclass
class StuckTransfer:
    """A transfer whose credit's (or refund's) request_id was used before with other
    content (as by another version of Transfers): Accounts refuses that step for ever."""

    ledger: Ledger
    source: str
    destination: str
    transfer_id: str
    reused: str  # the request_id of the step stuck
    settle: Settle  # `services.transfers.settle <transfer_id> ...` as a process

    async def ended(self) -> transfers_pb2.Transfer:
        """The transfer once it has left PENDING: a verdict applies when the lease has
        passed and recovery resumes the saga."""
        for _ in range(200):
            got = await self.ledger.transfers.get_transfer(
                transfers_pb2.GetTransferRequest(transfer_id=self.transfer_id)
            )
            if got.transfer.state != transfers_pb2.TRANSFER_STATE_PENDING:
                break
            await asyncio.sleep(0.05)
        return got.transfer


@pytest.fixture
async def stuck(
    start_runtime: StartRuntime, single_attempt_channels: ChannelFactory, shared_moto: Moto
) -> MakeStuck:
    """`stuck(earlier)`: a transfer of 20 from a source holding 50, whose credit's
    request_id deposited `earlier` before, without releasing the source's hold.
    `stuck(earlier, refund=True)`: the destination is closed, so the credit fails for
    good, and the refund's request_id deposited `earlier` into the source before."""
    env = shared_moto.ledger_env(SAGA_DEADLINE_SECONDS="0.5", SAGA_LEASE_SECONDS="1")
    accounts_runtime = await start_runtime(build_accounts, **env)
    target = f"127.0.0.1:{accounts_runtime.grpc_port}"
    transfers_runtime = await start_runtime(build_transfers, ACCOUNTS_TARGET=target, **env)
    ledger = Ledger(
        AccountsClient(single_attempt_channels.connect(target)),
        TransfersClient(
            single_attempt_channels.connect(f"127.0.0.1:{transfers_runtime.grpc_port}")
        ),
    )

    async def make(earlier: int, refund: bool = False) -> StuckTransfer:
        source, destination = await ledger.open(balance=50), await ledger.open()
        request = ledger.transfer_request(source, destination, 20)
        transfer_id = str(uuid.uuid5(TRANSFER_IDS, request.request_id))
        reused = step_request_id(transfer_id, "REFUND_SOURCE" if refund else "CREDIT_DESTINATION")
        if refund:
            await ledger.close(destination)
        await ledger.deposit(source if refund else destination, earlier, request_id=reused)
        pending = (await ledger.transfers.create_transfer(request)).transfer
        assert pending.state == transfers_pb2.TRANSFER_STATE_PENDING
        assert await ledger.holds(source) == [transfer_id]

        async def settle(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
            command = [PYTHON, "-m", "services.transfers.settle", transfer_id, *args]
            return await asyncio.to_thread(
                subprocess.run,
                command,
                cwd=ROOT,
                env={**os.environ, **env, "ACCOUNTS_TARGET": target, **settings},
                capture_output=True,
                text=True,
                timeout=60,
            )

        return StuckTransfer(ledger, source, destination, transfer_id, reused, settle)

    return make


async def test_an_operator_settles_a_transfer_stuck_on_a_reused_request(
    stuck: MakeStuck,
) -> None:
    """A person finds that the credit never happened and says so with
    `services.transfers.settle`, run as a process with the service's settings: the debit
    is refunded."""
    case = await stuck(1)
    ledger, source, destination = case.ledger, case.source, case.destination
    transfer_id, credit, settle = case.transfer_id, case.reused, case.settle

    shown = await settle()  # what to look up
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == (
        f"transfer {transfer_id}: RUNNING, retrying CREDIT_DESTINATION (request_id {credit})"
    )
    unreachable = await settle(AWS_ENDPOINT_URL="http://127.0.0.1:9")
    assert unreachable.returncode == 3
    assert len(unreachable.stderr.strip().splitlines()) == 1  # no traceback
    wrong = await settle("DEBIT_SOURCE", "took-effect", "--reason", "wrong step")
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        f"refused: saga {transfer_id} is on CREDIT_DESTINATION, not DEBIT_SOURCE"
    )
    done = await settle(
        "CREDIT_DESTINATION", "did-not-take-effect", "--reason", f"{credit} deposited 1, not 20"
    )
    assert done.returncode == 0, done.stderr
    assert f"request_id {credit}" in done.stdout

    transfer = await case.ended()
    assert transfer.state == transfers_pb2.TRANSFER_STATE_FAILED
    assert transfer.failure_reason == f"SETTLED: {credit} deposited 1, not 20"
    outcomes = [(step.name, step.outcome) for step in transfer.history]
    assert outcomes[0] == ("DEBIT_SOURCE", "DONE")
    assert outcomes[-3:] == [
        ("CREDIT_DESTINATION", "SETTLED"),
        ("CREDIT_DESTINATION", "FAILED"),
        ("REFUND_SOURCE", "DONE"),
    ]
    assert (await ledger.balance(source), await ledger.balance(destination)) == (50, 1)
    assert await ledger.holds(source) == []  # the refund released the debit's hold


async def test_an_operator_releases_the_hold_a_settled_credit_left(
    stuck: MakeStuck,
) -> None:
    """The earlier request was the same credit, sent without the hold's release (as by a
    Transfers from before holds): settled as taken effect, the transfer completes and the
    source stays held until `settle release-hold`, which waits for the transfer's end."""
    case = await stuck(20)
    ledger, source, settle = case.ledger, case.source, case.settle
    early = await settle("release-hold", "--reason", "too early")
    assert early.returncode == 1
    assert early.stderr.strip() == (
        f"refused: transfer {case.transfer_id} is RUNNING: its credit or its refund "
        "releases the hold"
    )
    assert await ledger.holds(source) == [case.transfer_id]
    verdict = await settle(
        "CREDIT_DESTINATION", "took-effect", "--reason", f"{case.reused} deposited the 20"
    )
    assert verdict.returncode == 0, verdict.stderr
    assert (await case.ended()).state == transfers_pb2.TRANSFER_STATE_COMPLETED
    assert (await ledger.balance(source), await ledger.balance(case.destination)) == (30, 20)
    assert await ledger.holds(source) == [case.transfer_id]  # nothing released it
    ended = f"transfer {case.transfer_id}: COMPLETED"
    shown = await settle()
    assert shown.stdout.strip() == f"{ended}, its hold still on account {source} (see release-hold)"
    blind = await settle(ACCOUNTS_TARGET="127.0.0.1:9")  # the saga's state is still shown
    assert blind.returncode == 0, blind.stderr
    assert blind.stdout.strip() == f"{ended}, its hold unknown (Accounts answered UNAVAILABLE)"

    unreachable = await settle("release-hold", "--reason", "x", ACCOUNTS_TARGET="127.0.0.1:9")
    assert unreachable.returncode == 3
    assert unreachable.stderr.startswith("failed: Accounts answered UNAVAILABLE")
    assert len(unreachable.stderr.strip().splitlines()) == 1
    released = await settle("release-hold", "--reason", "credit settled as taken effect")
    assert released.returncode == 0, released.stderr
    where = f"hold {case.transfer_id} on account {source}"
    assert released.stdout.strip() == f"released: {where}"
    assert await ledger.holds(source) == []
    assert await ledger.balance(source) == 30  # no money moved
    assert (await settle()).stdout.strip() == ended
    again = await settle("release-hold", "--reason", "run twice")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"nothing to release: no {where}"
    misused = await settle("release-hold", "took-effect", "--reason", "x")
    assert misused.returncode == 2


async def test_a_hold_a_failed_refund_left_is_released_once_the_money_is_back(
    stuck: MakeStuck,
) -> None:
    """A refund settled as not taken effect ends the transfer COMPENSATION_FAILED: the
    source is owed the debit, and its hold keeps it open for that money until the person
    who gave it back says so."""
    case = await stuck(1, refund=True)
    ledger, source, settle = case.ledger, case.source, case.settle
    verdict = await settle(
        "REFUND_SOURCE", "did-not-take-effect", "--reason", f"{case.reused} deposited 1"
    )
    assert verdict.returncode == 0, verdict.stderr
    transfer = await case.ended()
    assert transfer.failure_reason.startswith("COMPENSATION_FAILED"), transfer.failure_reason
    assert await ledger.holds(source) == [case.transfer_id]
    assert (await settle()).stdout.strip() == (
        f"transfer {case.transfer_id}: FAILED ({transfer.failure_reason}), its hold still on "
        f"account {source} (see release-hold)"
    )

    owed = await settle("release-hold", "--reason", "before the money")
    assert owed.returncode == 1
    assert owed.stderr.startswith(f"refused: transfer {case.transfer_id} ended COMPENSATION_FAILED")
    assert "--money-restored" in owed.stderr
    assert await ledger.holds(source) == [case.transfer_id]
    await ledger.deposit(source, 20)  # the person gives the debit back
    restored = await settle("release-hold", "--money-restored", "--reason", "refunded by hand")
    assert restored.returncode == 0, restored.stderr
    assert await ledger.holds(source) == []
    assert await ledger.balance(source) == 50 + 1
