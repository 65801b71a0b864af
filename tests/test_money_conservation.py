"""Money is conserved: 500 concurrent transfers under injected faults and SIGKILLs.

Real processes on loopback: Accounts (with faults: UNAVAILABLE at random, and
answers dropped after the effect so the saga retries a write that happened)
and Transfers, which is killed with SIGKILL several times mid-run and
restarted; moto in server mode for DynamoDB and SQS. Afterwards every
transfer has ended, each account's balance is exactly its deposit plus what
completed transfers moved (so no step took effect twice and none was lost),
and the activity feed holds each finished transfer exactly once.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients.aws import AwsClients, AwsSettings
from clients.channel import ChannelFactory
from interceptors.retry import RETRIED_WITH_HINT, server_hint
from ledger.v1 import accounts_pb2, money_pb2, transfers_pb2
from ledger.v1.accounts_platform import AccountsClient
from ledger.v1.transfers_platform import TransfersClient
from services.resources import LedgerNames
from tests.support.moto import Moto, queue_depth
from tests.support.net import (
    HOST,
    PYTHON,
    ROOT,
    ServiceProcess,
    free_port,
    poll,
    ready_status,
    running_service,
    service_env,
)

TRANSFERS = 500
ACCOUNTS = 5
OPENING_BALANCE = 5_000
KILLS = 3
IN_FLIGHT = 40
TERMINAL = (transfers_pb2.TRANSFER_STATE_COMPLETED, transfers_pb2.TRANSFER_STATE_FAILED)
RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
)


class Restartable:
    """The Transfers process, on fixed ports so that it can come back where it was."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.grpc_port, self.admin_port = free_port(), free_port()
        self.env = service_env("transfers", self.grpc_port, self.admin_port, **env)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "server"], cwd=ROOT, env=self.env, stderr=sink
            )
        poll(lambda: (ready_status(self.admin_port) or (0,))[0] == 200, 30, "transfers ready")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.kills += 1

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def ledger(shared_moto: Moto, tmp_path: Path) -> Iterator[tuple[ServiceProcess, Restartable]]:
    env = shared_moto.ledger_env(
        LOG_LEVEL="WARNING",
        SAGA_LEASE_SECONDS="2",
        SAGA_RECOVERY_INTERVAL_SECONDS="0.5",
        EVENTS_VISIBILITY_TIMEOUT_SECONDS="3",
        CLIENT_ACCOUNTS_BREAKER_ENABLED="false",
        # moto does DynamoDB's work one request at a time: after a kill, recovering
        # sagas can keep it slower than the breakers' slow-call bound, even than the
        # calls' deadlines, for a while; a breaker whose half-open probes keep failing
        # stays open longer each time (5 s, 10 s, ... 60 s), longer than this test waits.
        # Breakers are tested elsewhere (test_aws, test_client_resilience); here the
        # bulkheads and deadlines bound the calls.
        CLIENT_AWS_DYNAMODB_BREAKER_ENABLED="false",
    )
    faults = {"FAULT_UNAVAILABLE_RATE": "0.1", "FAULT_DROP_RATE": "0.1"}
    with running_service("tests.support.faults:accounts", tmp_path, {**env, **faults}) as accounts:
        transfers = Restartable({**env, "ACCOUNTS_TARGET": accounts.target}, tmp_path / "t.log")
        transfers.start()
        try:
            yield accounts, transfers
        finally:
            transfers.stop()


def eur(minor_units: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="EUR", minor_units=minor_units)


async def until_answered(call: object, what: str, timeout: float = 120.0) -> object:
    """Repeats an idempotent call (same request) until it gets an answer. Transient as
    PLATFORM.md defines it: the RETRYABLE codes, and RESOURCE_EXHAUSTED or ABORTED when
    the server says when to retry (e.g. a full bulkhead to DynamoDB while sagas recover
    after a kill)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()  # type: ignore[operator]
        except grpc.aio.AioRpcError as error:
            hint = server_hint(error.trailing_metadata())
            transient = error.code() in RETRYABLE or (
                error.code() in RETRIED_WITH_HINT and hint.delay is not None
            )
            if not transient or time.monotonic() > deadline:
                raise AssertionError(f"{what}: {error.code()} {error.details()}") from error
            await asyncio.sleep(max(0.2, hint.delay or 0.0))


async def test_money_is_conserved_through_faults_and_kills(
    ledger: tuple[ServiceProcess, Restartable], channels: ChannelFactory
) -> None:
    accounts_process, transfers_process = ledger
    accounts = AccountsClient(channels.connect(accounts_process.target))
    transfers = TransfersClient(channels.connect(f"{HOST}:{transfers_process.grpc_port}"))
    ids = []
    for n in range(ACCOUNTS):
        open_request = accounts_pb2.OpenAccountRequest(
            request_id=str(uuid.uuid4()), owner=f"holder {n}", currency_code="EUR"
        )
        opened = await until_answered(lambda r=open_request: accounts.open_account(r), "open")
        account_id = opened.account.account_id  # type: ignore[attr-defined]
        deposit = accounts_pb2.DepositRequest(
            request_id=str(uuid.uuid4()), account_id=account_id, amount=eur(OPENING_BALANCE)
        )
        await until_answered(lambda r=deposit: accounts.deposit(r), "deposit")
        ids.append(account_id)

    rng = random.Random(5)
    requests = []
    for _ in range(TRANSFERS):
        source, destination = rng.sample(ids, 2)
        requests.append(
            transfers_pb2.CreateTransferRequest(
                request_id=str(uuid.uuid4()),
                source_account_id=source,
                destination_account_id=destination,
                amount=eur(rng.randint(1, 3_000)),
            )
        )
    slots = asyncio.Semaphore(IN_FLIGHT)
    started = 0
    kill_points = [kill * TRANSFERS // (KILLS + 1) for kill in range(1, KILLS + 1)]
    kill_now = asyncio.Queue[None]()

    async def create(request: transfers_pb2.CreateTransferRequest) -> str:
        nonlocal started
        async with slots:
            started += 1
            if started in kill_points:
                kill_now.put_nowait(None)
            answer = await until_answered(
                lambda: transfers.create_transfer(request, timeout=5), "create"
            )
            return answer.transfer.transfer_id  # type: ignore[attr-defined,no-any-return]

    async def killer() -> None:
        for _ in kill_points:
            await kill_now.get()
            await asyncio.to_thread(transfers_process.kill)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(transfers_process.start)

    killing = asyncio.create_task(killer())
    transfer_ids = await asyncio.gather(*(create(request) for request in requests))
    await killing
    assert transfers_process.kills == KILLS
    assert len(set(transfer_ids)) == TRANSFERS

    finished: dict[str, transfers_pb2.Transfer] = {}
    deadline = time.monotonic() + 120
    while len(finished) < TRANSFERS:
        assert time.monotonic() < deadline, f"{TRANSFERS - len(finished)} transfers stuck"
        for transfer_id in set(transfer_ids) - set(finished):
            got = await until_answered(
                lambda t=transfer_id: transfers.get_transfer(
                    transfers_pb2.GetTransferRequest(transfer_id=t)
                ),
                "get",
            )
            transfer = got.transfer  # type: ignore[attr-defined]
            if transfer.state in TERMINAL:
                finished[transfer_id] = transfer
        await asyncio.sleep(0.2)

    expected = {account_id: OPENING_BALANCE for account_id in ids}
    for transfer in finished.values():
        if transfer.state == transfers_pb2.TRANSFER_STATE_COMPLETED:
            expected[transfer.source_account_id] -= transfer.amount.minor_units
            expected[transfer.destination_account_id] += transfer.amount.minor_units
        else:
            # Refused, or given up (and compensated) when its own deadline passed.
            assert transfer.failure_reason in ("INSUFFICIENT_FUNDS", "DEADLINE_EXCEEDED"), transfer
    balances, holds = {}, {}
    for account_id in ids:
        got = await until_answered(
            lambda a=account_id: accounts.get_account(accounts_pb2.GetAccountRequest(account_id=a)),
            "balance",
        )
        balances[account_id] = got.account.balance_minor_units  # type: ignore[attr-defined]
        holds[account_id] = list(got.account.hold_ids)  # type: ignore[attr-defined]
    assert sum(balances.values()) == ACCOUNTS * OPENING_BALANCE
    assert min(balances.values()) >= 0
    assert balances == expected  # no step took effect twice, none was lost
    # Every ended transfer released the hold its debit placed, whatever was killed.
    assert holds == {account_id: [] for account_id in ids}
    states = Counter(transfer.state for transfer in finished.values())
    assert states[transfers_pb2.TRANSFER_STATE_COMPLETED] > 0
    assert states[transfers_pb2.TRANSFER_STATE_FAILED] > 0

    want: Counter[tuple[str, str]] = Counter()
    for transfer in finished.values():
        want[(transfer.source_account_id, transfer.transfer_id)] += 1
        if transfer.state == transfers_pb2.TRANSFER_STATE_COMPLETED:
            want[(transfer.destination_account_id, transfer.transfer_id)] += 1

    async def feeds() -> Counter[tuple[str, str]]:
        seen: Counter[tuple[str, str]] = Counter()
        for account_id in ids:
            token = ""
            while True:
                page = await until_answered(
                    lambda a=account_id, t=token: transfers.list_account_activity(
                        transfers_pb2.ListAccountActivityRequest(
                            account_id=a, page_size=1000, page_token=t
                        )
                    ),
                    "activity",
                )
                for entry in page.entries:  # type: ignore[attr-defined]
                    seen[(account_id, entry.transfer_id)] += 1
                token = page.next_page_token  # type: ignore[attr-defined]
                if not token:
                    break
        return seen

    deadline = time.monotonic() + 60
    while (seen := await feeds()) != want:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the activity feed never matched the transfers: {len(want - seen)} entries "
                f"missing, {len(seen - want)} extra; {await dead_letters(transfers_process)} "
                "events dead-lettered"
            )
        await asyncio.sleep(0.5)
    assert await dead_letters(transfers_process) == 0  # no event was given up on


async def dead_letters(transfers: Restartable) -> int:
    """Messages in the ledger's events dead-letter queue."""
    env = transfers.env
    settings = AwsSettings(endpoint_url=env["AWS_ENDPOINT_URL"], region=env["AWS_REGION"])
    clients = AwsClients(settings)
    try:
        sqs = await clients.client("sqs")
        url = await sqs.get_queue_url(QueueName=LedgerNames(env["LEDGER_NAME"]).dead_letter_queue)
        return await queue_depth(sqs, url["QueueUrl"])
    finally:
        await clients.close()
