"""Idempotency by request_id: the runner's rules (in memory) and the DynamoDB store (moto)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from clients.aws import AwsClients, AwsSettings
from durable.dynamo import TableSpec, ensure_tables
from durable.idempotency import (
    Claim,
    DynamoIdempotencyStore,
    Idempotency,
    IdempotencyStore,
    InProgress,
    KeyReused,
    MemoryIdempotencyStore,
    Outcome,
)
from interceptors.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    PreconditionViolation,
    Replayed,
    Unavailable,
    to_status,
)
from interceptors.inbound import InboundWork, inbound_var
from ledger.v1 import accounts_pb2
from tests.support.moto import Moto

Request = accounts_pb2.DepositRequest
Response = accounts_pb2.DepositResponse


def request(amount: int = 5) -> accounts_pb2.DepositRequest:
    return accounts_pb2.DepositRequest(request_id="r-1", account_id="a", memo=str(amount))


class Effect:
    def __init__(self, error: Exception | None = None, delay: float = 0.0) -> None:
        self.runs = 0
        self.error = error
        self.delay = delay

    async def __call__(self, claim: Claim) -> accounts_pb2.DepositResponse:
        self.runs += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return Response(account=accounts_pb2.Account(account_id=f"run-{self.runs}"))


async def run(idempotency: Idempotency, effect: Effect, body: Request | None = None) -> Any:
    return await idempotency.run("test/Deposit", "r-1", body or request(), Response, effect)


@pytest.fixture(params=["memory", "dynamodb"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[IdempotencyStore]:
    if request.param == "memory":
        yield MemoryIdempotencyStore()
        return
    moto: Moto = request.getfixturevalue("shared_moto")
    clients = AwsClients(AwsSettings(endpoint_url=moto.url))
    dynamodb = await clients.client("dynamodb")
    table = f"idempotency-{uuid.uuid4().hex[:8]}"
    await ensure_tables(dynamodb, [TableSpec(table, "key", ttl_attribute="expires_at")])
    yield DynamoIdempotencyStore(dynamodb, table)
    await clients.close()


async def test_a_repeat_gets_the_first_answer_without_a_second_effect(
    store: IdempotencyStore,
) -> None:
    idempotency, effect = Idempotency(store), Effect()
    first = await run(idempotency, effect)
    again = await run(idempotency, effect)
    assert again == first
    assert effect.runs == 1


async def test_another_body_under_the_same_key_is_refused(store: IdempotencyStore) -> None:
    idempotency = Idempotency(store)
    await run(idempotency, Effect())
    with pytest.raises(InvalidArgument) as caught:
        await run(idempotency, Effect(), request(amount=6))
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert caught.value.violations[0].field == "request_id"


async def test_a_permanent_error_is_recorded_and_replayed_exactly(
    store: IdempotencyStore,
) -> None:
    idempotency = Idempotency(store)
    refused = FailedPrecondition(
        "insufficient funds",
        [PreconditionViolation("INSUFFICIENT_FUNDS", "accounts/a", "balance 30 < 50")],
        reason="INSUFFICIENT_FUNDS",
        metadata={"balanceMinorUnits": "30"},
    )
    with pytest.raises(FailedPrecondition):
        await run(idempotency, Effect(refused))
    later = Effect()  # would succeed now: the recorded outcome still wins
    with pytest.raises(Replayed) as caught:
        await run(idempotency, later)
    assert later.runs == 0
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert to_status(caught.value, "d") == to_status(refused, "d")


@pytest.mark.parametrize(
    "failure",
    [Unavailable("down"), Aborted("contended", reason="ACCOUNT_CONTENDED", retry_after=0.1)],
)
async def test_a_transient_failure_releases_the_key_for_a_retry(
    store: IdempotencyStore, failure: Exception
) -> None:
    idempotency = Idempotency(store)
    with pytest.raises(type(failure)):
        await run(idempotency, Effect(failure))
    retried = Effect()
    answer = await run(idempotency, retried)
    assert retried.runs == 1  # not replayed: a retry of a transient failure runs again
    assert answer.account.account_id == "run-1"


async def test_a_repeat_during_the_first_call_waits_for_its_answer(
    store: IdempotencyStore,
) -> None:
    idempotency, effect = Idempotency(store, poll_seconds=0.01), Effect(delay=0.2)
    answers = await asyncio.gather(*(run(idempotency, effect) for _ in range(5)))
    assert effect.runs == 1
    assert len({answer.SerializeToString() for answer in answers}) == 1


async def test_a_repeat_that_cannot_wait_is_aborted_with_retry_info(
    store: IdempotencyStore,
) -> None:
    idempotency = Idempotency(store, poll_seconds=0.05)
    first = asyncio.create_task(run(idempotency, Effect(delay=0.5)))
    await asyncio.sleep(0.05)
    # the repeat's caller allows 150 ms
    token = inbound_var.set(InboundWork(deadline=time.monotonic() + 0.15))
    try:
        with pytest.raises(Aborted) as caught:
            await run(idempotency, Effect())
    finally:
        inbound_var.reset(token)
    assert caught.value.reason == "REQUEST_IN_PROGRESS"
    assert caught.value.transient
    await first


async def test_a_claim_whose_holder_died_is_taken_over_after_its_lease() -> None:
    now = [0.0]
    store = MemoryIdempotencyStore(clock=lambda: now[0])
    claim = await store.claim("k", "digest", lease_seconds=5)
    assert isinstance(claim, Claim)
    with pytest.raises(InProgress):
        await store.claim("k", "digest", 5)
    with pytest.raises(KeyReused):
        await store.claim("k", "other", 5)
    now[0] = 6.0  # the holder never finished
    taken = await store.claim("k", "digest", 5)
    assert isinstance(taken, Claim)
    await store.complete(claim, Outcome(response=b"late"))  # the old holder's answer is void
    await store.complete(taken, Outcome(response=b"new"))
    assert await store.claim("k", "digest", 5) == Outcome(response=b"new")
