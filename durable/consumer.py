"""An SQS consumer: long polling, bounded concurrency, visibility extension, DLQ.

`SqsConsumer.run_forever()` long-polls (`WaitTimeSeconds`, 20 s by default)
for at most as many messages as it has free slots (`max_in_flight`), and
runs the handler of each in its own task:

- while a handler works, the message's visibility timeout is extended every
  half timeout, so a slow handler does not see its message delivered twice;
- success deletes the message; a failure leaves it, so SQS delivers it again,
  and after the queue's `maxReceiveCount` moves it to the dead-letter queue
  (the redrive policy set by Terraform, or by the local bootstrap). Nothing
  is dropped: a message is only ever deleted after its handler succeeded.
- a failed message stays hidden for a time that doubles with each receive
  (`failure_backoff`: the visibility timeout, twice it, four times, up to
  `max_backoff`), set with ChangeMessageVisibility as the SQS developer guide
  advises. Why: each receive counts towards `maxReceiveCount` whatever the
  cause, and most failures are a dependency's outage, not a bad message. At
  a fixed timeout, 5 receives of 30 s dead-letter every pending event of an
  outage of 2.5 min; doubling, one of 15 min. A poison message still
  reaches the dead-letter queue, later.
- the handler runs with the correlation id and trace context of the message
  attributes made current, so its logs and calls join the original trace.
- handlers must be idempotent (delivery is at least once); the reference
  handler keys its writes by event id.
- `platform_queue_messages_total{queue, outcome}` counts processed and failed
  handlings (a registry of None: the metric goes nowhere).

Errors of SQS itself (outage, throttling) are logged and retried after a
backoff; the loop never dies of them. Anchors: the AWS SQS developer guide
(long polling, visibility, redrive), Spring Cloud AWS's listener container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from prometheus_client import CollectorRegistry, Counter

from interceptors.correlation import HEADER as CORRELATION_HEADER
from interceptors.inbound import InboundWork, inbound_var
from interceptors.retry import RetryPolicy
from interceptors.tracing import PROPAGATOR

_log = logging.getLogger(__name__)
SQS_MAX_VISIBILITY = 43200  # seconds, ChangeMessageVisibility's upper limit


@dataclass(frozen=True)
class Delivery:
    message_id: str
    body: dict[str, Any]
    attributes: dict[str, str]
    receive_count: int


Handler = Callable[[Delivery], Awaitable[None]]


class SqsConsumer:
    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        handler: Handler,
        *,
        max_in_flight: int = 10,
        wait_seconds: int = 20,
        visibility_timeout: int = 30,
        max_backoff: int = 900,
        backoff: RetryPolicy | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.handler = handler
        self.max_in_flight = max_in_flight
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self.max_backoff = max_backoff
        self.backoff = backoff or RetryPolicy(initial_backoff=0.2, max_backoff=5.0)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._working: set[asyncio.Task[None]] = set()
        queue = queue_url.rstrip("/").rsplit("/", 1)[-1]
        messages = Counter(
            "platform_queue_messages",
            "Queue messages handled, by outcome (failed ones are delivered again, "
            "then dead-lettered).",
            ["queue", "outcome"],
            registry=registry,
        )
        self._processed = messages.labels(queue, "processed")
        self._failed = messages.labels(queue, "failed")

    async def run_forever(self) -> None:
        failures = 0
        try:
            while True:
                free = await self._free_slots()
                try:
                    answer = await self.sqs.receive_message(
                        QueueUrl=self.queue_url,
                        MaxNumberOfMessages=min(free, 10),
                        WaitTimeSeconds=self.wait_seconds,
                        VisibilityTimeout=self.visibility_timeout,
                        MessageAttributeNames=["All"],
                        MessageSystemAttributeNames=["ApproximateReceiveCount"],
                    )
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    for _ in range(free):
                        self._slots.release()
                    failures += 1
                    _log.warning("receiving failed", extra={"error_type": type(error).__name__})
                    await asyncio.sleep(self.backoff.backoff(min(failures, 8)) + 0.05)
                    continue
                messages = answer.get("Messages", [])
                for _ in range(free - len(messages)):
                    self._slots.release()
                for message in messages:
                    task = asyncio.create_task(self._handle(message))
                    self._working.add(task)
                    task.add_done_callback(self._working.discard)
        finally:
            for task in list(self._working):
                task.cancel()
            for task in list(self._working):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _free_slots(self) -> int:
        await self._slots.acquire()
        free = 1
        while free < self.max_in_flight and not self._slots.locked():
            await self._slots.acquire()
            free += 1
        return free

    async def _handle(self, message: dict[str, Any]) -> None:
        receipt = message["ReceiptHandle"]
        receive_count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
        keeper = asyncio.create_task(self._keep_invisible(receipt))
        try:
            delivery = Delivery(
                message_id=message["MessageId"],
                body=json.loads(message["Body"]),
                attributes={
                    name: value.get("StringValue", "")
                    for name, value in message.get("MessageAttributes", {}).items()
                },
                receive_count=receive_count,
            )
            await self._in_context(delivery)
            await self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
            self._processed.inc()
        except asyncio.CancelledError:
            raise
        except Exception:
            self._failed.inc()
            keeper.cancel()  # it must not reset the hiding below to the plain timeout
            await asyncio.wait([keeper])
            hidden = failure_backoff(receive_count, self.visibility_timeout, self.max_backoff)
            # Left on the queue: delivered again once hidden long enough, and
            # dead-lettered by the redrive policy after maxReceiveCount receives.
            _log.exception(
                "message handling failed",
                extra={"message_id": message["MessageId"], "retry_in_seconds": hidden},
            )
            await self._hide(receipt, hidden)
        finally:
            keeper.cancel()
            self._slots.release()

    async def _hide(self, receipt: str, seconds: int) -> None:
        """Keeps a failed message hidden `seconds` from now; if SQS cannot be told, the
        message comes back after its current timeout: sooner, never lost."""
        if seconds <= self.visibility_timeout:
            return  # the receive already hid it this long
        try:
            await self.sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=seconds
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:
            _log.warning("backing off failed", extra={"error_type": type(error).__name__})

    async def _in_context(self, delivery: Delivery) -> None:
        token = otel_context.attach(PROPAGATOR.extract(delivery.attributes))
        correlation_id = delivery.attributes.get(CORRELATION_HEADER) or ""
        inbound = inbound_var.set(InboundWork(correlation_id))
        try:
            await self.handler(delivery)
        finally:
            inbound_var.reset(inbound)
            otel_context.detach(token)

    async def _keep_invisible(self, receipt: str) -> None:
        while True:
            await asyncio.sleep(self.visibility_timeout / 2)
            try:
                await self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=receipt,
                    VisibilityTimeout=self.visibility_timeout,
                )
            except asyncio.CancelledError:
                raise
            except Exception as error:
                _log.warning(
                    "visibility extension failed", extra={"error_type": type(error).__name__}
                )


def failure_backoff(receive_count: int, visibility_timeout: int, max_backoff: int) -> int:
    """Seconds a message stays hidden after its `receive_count`-th receive failed:
    the visibility timeout doubled per earlier receive, at most `max_backoff` (and
    never under the timeout, nor over SQS's limit of 12 hours)."""
    doubled = visibility_timeout << min(max(receive_count, 1) - 1, 16)
    return max(visibility_timeout, min(doubled, max_backoff, SQS_MAX_VISIBILITY))
