"""The SQS consumer against moto: delivery, redelivery, dead-lettering, visibility, context."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from clients.aws import AwsClients, AwsSettings
from durable.consumer import Delivery, SqsConsumer, retry_delay
from durable.events import SqsPublisher
from interceptors.correlation import current_correlation_id
from interceptors.errors import Unavailable
from tests.support.moto import Moto, queue_depth


class Queues:
    def __init__(self, sqs: Any, url: str, dead_letter_url: str) -> None:
        self.sqs = sqs
        self.url = url
        self.dead_letter_url = dead_letter_url

    async def count(self, url: str) -> int:
        return await queue_depth(self.sqs, url)


@pytest.fixture
async def sqs(shared_moto: Moto) -> AsyncIterator[Any]:
    clients = AwsClients(AwsSettings(endpoint_url=shared_moto.url, read_timeout=5.0))
    yield await clients.client("sqs")
    await clients.close()


async def queues_with(sqs: Any, max_receive_count: int) -> Queues:
    """A queue of its own whose redrive policy dead-letters after `max_receive_count`."""
    name = f"events-{uuid.uuid4().hex[:8]}"
    dead = await sqs.create_queue(QueueName=f"{name}-dlq")
    arn = await sqs.get_queue_attributes(QueueUrl=dead["QueueUrl"], AttributeNames=["QueueArn"])
    redrive = {
        "deadLetterTargetArn": arn["Attributes"]["QueueArn"],
        "maxReceiveCount": str(max_receive_count),
    }
    queue = await sqs.create_queue(
        QueueName=name, Attributes={"RedrivePolicy": json.dumps(redrive)}
    )
    return Queues(sqs, queue["QueueUrl"], dead["QueueUrl"])


@pytest.fixture
async def queues(sqs: Any) -> Queues:
    return await queues_with(sqs, max_receive_count=3)


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


async def test_a_failing_message_is_retried_later_each_time_then_dead_lettered(
    queues: Queues,
) -> None:
    await SqsPublisher(queues.sqs, queues.url).publish({"event_id": "poison"}, {})
    receives: list[tuple[int, float]] = []
    loop = asyncio.get_running_loop()

    async def handle(delivery: Delivery) -> None:
        receives.append((delivery.receive_count, loop.time()))
        raise ValueError("cannot handle this one")

    running = asyncio.create_task(consumer(queues, handle).run_forever())

    async def dead_lettered() -> bool:
        return await queues.count(queues.dead_letter_url) == 1

    await eventually(dead_lettered, timeout=30)
    running.cancel()
    # maxReceiveCount, then the dead-letter queue: never dropped
    assert [count for count, _ in receives] == [1, 2, 3]
    assert await queues.count(queues.url) == 0
    # Hidden 2 s after the second failure (the visibility timeout doubled): at a
    # fixed timeout the third receive would come 1 s after the second.
    (_, second), (_, third) = receives[1:]
    assert third - second >= 1.95


async def test_pending_events_outlive_an_outage_longer_than_the_fixed_timeouts(
    sqs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler's dependency is down for `outage` seconds. At a fixed visibility
    timeout of 1 s the five receives that maxReceiveCount allows come within about
    4 s, all fail, and the event is dead-lettered; waiting 1, 2 and 4 s after its
    receives, its fourth attempt comes after the outage and succeeds. (The fifth is
    headroom: on a loaded machine a receive whose answer came too late for the
    client still counts, as it does in SQS.)"""
    outage = 6.5
    queues = await queues_with(sqs, max_receive_count=5)
    await SqsPublisher(sqs, queues.url).publish({"event_id": "during-an-outage"}, {})
    loop = asyncio.get_running_loop()
    back_at = loop.time() + outage
    outcomes: list[tuple[int, str]] = []

    async def handle(delivery: Delivery) -> None:
        if loop.time() < back_at:
            outcomes.append((delivery.receive_count, "failed"))
            raise Unavailable("dynamodb is unavailable")
        outcomes.append((delivery.receive_count, "handled"))

    async def handled_or_dead_lettered() -> bool:
        if await queues.count(queues.dead_letter_url):
            return True
        return bool(outcomes) and outcomes[-1][1] == "handled" and await _empty(queues, queues.url)

    running = asyncio.create_task(consumer(queues, handle).run_forever())
    await eventually(handled_or_dead_lettered, timeout=40)
    running.cancel()
    # If it fails: where the event went, and whether receives were lost on the way.
    seen = {
        "outcomes": outcomes,
        "dead-lettered": await queues.count(queues.dead_letter_url),
        "warnings": [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING],
    }
    assert outcomes[-1][1] == "handled", seen
    counts = [count for count, _ in outcomes]
    assert counts == sorted(set(counts)), seen  # each receive handled once
    assert seen["dead-lettered"] == 0, seen


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


@pytest.mark.parametrize(
    ("receive_count", "timeout", "longest", "since_receive", "delay"),
    [
        (1, 30, 900, 0.5, 30),
        (2, 30, 900, 0.5, 60),
        (5, 30, 900, 0.5, 480),
        (6, 30, 900, 0.5, 900),  # 960, at most the longest
        (3, 1, 2, 0.5, 2),
        (1, 30, 10, 0.5, 30),  # a longest under the timeout: the receive hid it that long
        (0, 30, 900, 0.5, 30),  # a missing count reads as a first receive
        # SQS refuses more than 12 h from the receive (less a minute's margin), and no
        # huge number on the way:
        (10_000, 30, 10**9, 0.0, 43_140),
        (10_000, 30, 10**9, 40_000.2, 3_139),
        (3, 30, 900, 43_190.0, 30),  # nothing left to add: the receive's own timeout
    ],
)
def test_the_retry_delay_doubles_per_receive_within_its_bounds(
    receive_count: int, timeout: int, longest: int, since_receive: float, delay: int
) -> None:
    assert retry_delay(receive_count, timeout, longest, since_receive) == delay


async def test_failed_receives_are_counted_and_the_loop_goes_on(queues: Queues) -> None:
    """A consumer that cannot receive (here the queue is gone; in AWS, a role or key
    that does not allow it) leaves messages to expire unseen: it must show."""
    await queues.sqs.delete_queue(QueueUrl=queues.url)
    registry = CollectorRegistry()

    async def never_called(delivery: Delivery) -> None:
        raise AssertionError("nothing can be received")

    running = asyncio.create_task(consumer(queues, never_called, registry=registry).run_forever())

    async def failed_twice() -> bool:
        errors = registry.get_sample_value("platform_queue_receive_errors_total", {"queue": name})
        return (errors or 0) >= 2

    name = queues.url.rsplit("/", 1)[-1]
    await eventually(failed_twice, timeout=15)
    assert not running.done()  # the loop keeps trying
    running.cancel()


async def test_stopping_lets_the_handlers_in_flight_finish(queues: Queues) -> None:
    await SqsPublisher(queues.sqs, queues.url).publish({"event_id": "in-flight"}, {})
    started, handled = asyncio.Event(), []

    async def handle(delivery: Delivery) -> None:
        started.set()
        await asyncio.sleep(0.5)
        handled.append(delivery.body["event_id"])

    running = asyncio.create_task(consumer(queues, handle, drain_seconds=5).run_forever())
    await asyncio.wait_for(started.wait(), 15)
    running.cancel()  # a shutdown while the handler works
    with contextlib.suppress(asyncio.CancelledError):
        await running
    assert handled == ["in-flight"]
    assert await queues.count(queues.url) == 0  # done and deleted: no receive spent


async def test_stopping_cancels_a_handler_that_outlasts_the_drain(queues: Queues) -> None:
    await SqsPublisher(queues.sqs, queues.url).publish({"event_id": "slow"}, {})
    started = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        started.set()
        await asyncio.sleep(30)

    running = asyncio.create_task(consumer(queues, handle, drain_seconds=0.2).run_forever())
    await asyncio.wait_for(started.wait(), 15)
    stopping = asyncio.get_running_loop().time()
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    assert asyncio.get_running_loop().time() - stopping < 5
    assert await queues.count(queues.url) == 1  # left for SQS to deliver again
