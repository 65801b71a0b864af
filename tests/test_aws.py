"""The AWS wrapper against moto in server mode, stopped and restarted mid-test."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from clients.aws import AwsClients, AwsSettings, is_transient, safe_to_retry
from interceptors.breaker import BreakerSettings, State
from interceptors.errors import Unavailable
from interceptors.retry import RetryPolicy
from server.config import EnvReader
from tests.support.moto import Moto


@pytest.fixture
async def aws(moto: Moto) -> AsyncIterator[AwsClients]:
    settings = AwsSettings(
        endpoint_url=moto.url,
        connect_timeout=0.3,
        read_timeout=1.0,
        retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02),
        breaker=BreakerSettings(minimum_calls=4, open_seconds=0.5, half_open_probes=1),
    )
    clients = AwsClients(settings)
    yield clients
    await clients.close()


def state_of(client: Any) -> State:
    state: State = client.breaker.state
    return state


async def create_table(dynamodb: Any) -> None:
    await dynamodb.create_table(
        TableName="items",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


async def test_breaker_opens_and_closes_and_unsafe_calls_are_sent_once(
    moto: Moto, aws: AwsClients
) -> None:
    dynamodb = await aws.client("dynamodb")
    sends: list[str] = []
    dynamodb.raw.meta.events.register(
        "before-send.dynamodb", lambda **kwargs: sends.append(kwargs["request"].url)
    )
    await create_table(dynamodb)
    await dynamodb.put_item(TableName="items", Item={"pk": {"S": "a"}})
    got = await dynamodb.get_item(TableName="items", Key={"pk": {"S": "a"}})
    assert got["Item"]["pk"]["S"] == "a"

    moto.stop()
    sends.clear()
    with pytest.raises(Unavailable) as caught:  # unconditional write: not safe to repeat
        await dynamodb.put_item(TableName="items", Item={"pk": {"S": "b"}})
    assert caught.value.reason == "DEPENDENCY_UNAVAILABLE"
    assert len(sends) == 1
    sends.clear()
    with pytest.raises(Unavailable):  # a read: retried, until the breaker opens
        await dynamodb.get_item(TableName="items", Key={"pk": {"S": "a"}})
    assert 2 <= len(sends) <= 3
    assert state_of(dynamodb) is State.OPEN

    sends.clear()
    timings = []
    for _ in range(10):
        started = time.perf_counter()
        with pytest.raises(Unavailable) as caught:
            await dynamodb.get_item(TableName="items", Key={"pk": {"S": "a"}})
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.002
    assert caught.value.reason == "CIRCUIT_OPEN"
    assert caught.value.retry_after is not None
    assert sends == []

    moto.start()  # back, empty (moto keeps no state): the service re-creates its table
    deadline = time.monotonic() + 10
    breaker = dynamodb.breaker
    assert breaker is not None
    while breaker.retry_after() > 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await dynamodb.list_tables()  # the half-open probe
    assert state_of(dynamodb) is State.CLOSED
    await create_table(dynamodb)
    await dynamodb.put_item(TableName="items", Item={"pk": {"S": "c"}})


async def test_a_long_poll_on_an_empty_queue_closes_a_half_open_breaker(moto: Moto) -> None:
    """After an outage the SQS breaker's probe is often the consumer's long poll: an empty
    queue answering after its wait is a success, not a slow call that re-opens the breaker
    (and starves the publisher sharing it)."""
    clients = AwsClients(
        AwsSettings(
            endpoint_url=moto.url,
            connect_timeout=0.3,
            read_timeout=3.0,
            default_timeout=3.0,
            retry=RetryPolicy(max_attempts=1),
            breaker=BreakerSettings(
                minimum_calls=2, open_seconds=0.3, half_open_probes=1, slow_call_seconds=0.5
            ),
        )
    )
    try:
        sqs = await clients.client("sqs")
        url = (await sqs.create_queue(QueueName="quiet"))["QueueUrl"]
        moto.stop()
        while state_of(sqs) is not State.OPEN:
            with pytest.raises(Unavailable):
                await sqs.get_queue_attributes(QueueUrl=url)
        moto.start()
        await sqs.raw.create_queue(QueueName="quiet")  # moto came back empty
        breaker = sqs.breaker
        assert breaker is not None
        await asyncio.sleep(breaker.retry_after())

        started = time.monotonic()
        answer = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
        assert answer.get("Messages", []) == []
        assert time.monotonic() - started >= 0.9  # it waited: longer than slow_call_seconds
        assert state_of(sqs) is State.CLOSED
    finally:
        await clients.close()


async def test_a_long_poll_is_given_its_wait_beyond_the_default_timeout(
    shared_moto: Moto,
) -> None:
    """Outside an inbound call a call's deadline is `default_timeout`; a long poll's is its
    wait on top. Abandoned at the shorter one, a poll that SQS answers with a message
    would still count that receive, and the message would near its dead-letter queue
    without being seen."""
    clients = AwsClients(
        AwsSettings(endpoint_url=shared_moto.url, read_timeout=6.0, default_timeout=1.0)
    )
    try:
        sqs = await clients.client("sqs")
        url = (await sqs.create_queue(QueueName=f"patient-{uuid.uuid4().hex[:8]}"))["QueueUrl"]
        started = time.monotonic()
        answer = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=3)
        assert answer.get("Messages", []) == []
        assert time.monotonic() - started >= 2.9
    finally:
        await clients.close()


async def test_aws_client_errors_pass_through_and_do_not_open_the_breaker(
    aws: AwsClients,
) -> None:
    dynamodb = await aws.client("dynamodb")
    for _ in range(8):
        with pytest.raises(ClientError) as caught:
            await dynamodb.get_item(TableName="missing", Key={"pk": {"S": "a"}})
        assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert state_of(dynamodb) is State.CLOSED


def test_which_operations_are_safe_to_repeat() -> None:
    assert safe_to_retry("get_item", {})
    assert safe_to_retry("query", {})
    assert safe_to_retry("receive_message", {})
    assert not safe_to_retry("put_item", {"Item": {}})
    assert safe_to_retry(
        "put_item", {"Item": {}, "ConditionExpression": "attribute_not_exists(pk)"}
    )
    assert not safe_to_retry("transact_write_items", {"TransactItems": []})
    assert safe_to_retry("transact_write_items", {"TransactItems": [], "ClientRequestToken": "t"})
    assert not safe_to_retry("send_message", {"MessageBody": "x"})
    assert safe_to_retry("send_message", {"MessageBody": "x", "MessageDeduplicationId": "d"})
    assert not safe_to_retry("delete_table", {})


def test_transient_classification() -> None:
    def client_error(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
        )

    assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(TimeoutError())
    assert is_transient(client_error("ProvisionedThroughputExceededException", 400))
    assert is_transient(client_error("InternalServerError", 500))
    assert not is_transient(client_error("ConditionalCheckFailedException", 400))
    assert not is_transient(ValueError())


def test_aws_settings_from_the_environment() -> None:
    read = EnvReader(
        {
            "AWS_REGION": "eu-west-1",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
            "AWS_READ_TIMEOUT_SECONDS": "0.5",
            "CLIENT_AWS_DYNAMODB_BULKHEAD_MAX_CONCURRENT": "16",
            "CLIENT_AWS_DYNAMODB_RETRY_MAX_ATTEMPTS": "2",
        }
    )
    dynamodb = AwsSettings.from_env(read, "dynamodb")
    assert (dynamodb.region, dynamodb.endpoint_url, dynamodb.read_timeout) == (
        "eu-west-1",
        "http://127.0.0.1:5000",
        0.5,
    )
    assert dynamodb.bulkhead.max_concurrent == 16
    assert dynamodb.retry.max_attempts == 2
    sqs = AwsSettings.from_env(read, "sqs")
    assert sqs.bulkhead.max_concurrent == 64  # the defaults
    assert AwsSettings.from_env(EnvReader({}), "sqs").endpoint_url is None  # real AWS
