"""The SQS consumer against moto: delivery, redelivery, dead-lettering, visibility, context."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from clients.aws import AwsClients, AwsSettings
from durable.consumer import Delivery, SqsConsumer
from durable.events import SqsPublisher
from interceptors.correlation import current_correlation_id
from tests.support.moto import Moto


class Queues:
    def __init__(self, sqs: Any, url: str, dead_letter_url: str) -> None:
        self.sqs = sqs
        self.url = url
        self.dead_letter_url = dead_letter_url

    async def count(self, url: str) -> int:
        answer = await self.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )
        return sum(int(value) for value in answer["Attributes"].values())


@pytest.fixture
async def queues(shared_moto: Moto) -> AsyncIterator[Queues]:
    clients = AwsClients(AwsSettings(endpoint_url=shared_moto.url, read_timeout=5.0))
    sqs = await clients.client("sqs")
    name = f"events-{uuid.uuid4().hex[:8]}"
    dead = await sqs.create_queue(QueueName=f"{name}-dlq")
    arn = await sqs.get_queue_attributes(QueueUrl=dead["QueueUrl"], AttributeNames=["QueueArn"])
    redrive = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": "3"}
    queue = await sqs.create_queue(
        QueueName=name, Attributes={"RedrivePolicy": json.dumps(redrive)}
    )
    yield Queues(sqs, queue["QueueUrl"], dead["QueueUrl"])
    await clients.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def consumer(queues: Queues, handler: Any, **options: Any) -> SqsConsumer:
    settings = {"wait_seconds": 1, "visibility_timeout": 1, **options}
    return SqsConsumer(queues.sqs, queues.url, handler, **settings)


async def test_events_are_handled_with_their_context_and_deleted(queues: Queues) -> None:
    publisher = SqsPublisher(queues.sqs, queues.url)
    for n in range(12):
        await publisher.publish(
            {"event_id": f"e-{n}", "type": "test.Event", "n": n}, {"x-correlation-id": f"c-{n}"}
        )
    seen: list[tuple[int, str | None, str]] = []

    async def handle(delivery: Delivery) -> None:
        seen.append((delivery.body["n"], current_correlation_id(), delivery.attributes["event-id"]))

    running = asyncio.create_task(consumer(queues, handle, max_in_flight=4).run_forever())

    async def all_seen() -> bool:
        return len(seen) == 12

    await eventually(all_seen)
    await eventually(lambda: _empty(queues, queues.url))
    running.cancel()
    assert sorted(seen) == [(n, f"c-{n}", f"e-{n}") for n in range(12)]


async def _empty(queues: Queues, url: str) -> bool:
    return await queues.count(url) == 0


async def test_a_failing_message_is_retried_then_dead_lettered(queues: Queues) -> None:
    await SqsPublisher(queues.sqs, queues.url).publish({"event_id": "poison"}, {})
    receives: list[int] = []

    async def handle(delivery: Delivery) -> None:
        receives.append(delivery.receive_count)
        raise ValueError("cannot handle this one")

    running = asyncio.create_task(consumer(queues, handle).run_forever())

    async def dead_lettered() -> bool:
        return await queues.count(queues.dead_letter_url) == 1

    await eventually(dead_lettered, timeout=30)
    running.cancel()
    assert receives == [1, 2, 3]  # maxReceiveCount, then the dead-letter queue: never dropped
    assert await queues.count(queues.url) == 0


async def test_a_slow_handler_keeps_its_message_invisible(queues: Queues) -> None:
    await SqsPublisher(queues.sqs, queues.url).publish({"event_id": "slow"}, {})
    handled: list[str] = []

    async def handle(delivery: Delivery) -> None:
        handled.append(delivery.message_id)
        await asyncio.sleep(3.5)  # over three visibility timeouts of 1 s

    running = asyncio.create_task(consumer(queues, handle).run_forever())

    async def done() -> bool:
        return bool(handled) and await queues.count(queues.url) == 0

    await eventually(done, timeout=30)
    running.cancel()
    assert len(handled) == 1  # extended while it worked: never delivered twice
