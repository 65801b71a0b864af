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
  (`retry_delay`: what is left of the visibility timeout after the first
  receive, twice the timeout after the second, four times after the third,
  up to `max_retry_delay` and within SQS's 12 hours per receive), set with
  ChangeMessageVisibility as the SQS developer guide advises. Why: each
  receive counts towards `maxReceiveCount` whatever the cause, and most
  failures are a dependency's outage, not a bad message. At the defaults
  (30 s, 5 receives) the last attempt comes 450 s after the first instead
  of 120 s: pending events outlive an outage of about 7.5 min, not 2, before
  they are dead-lettered. A poison message still reaches the dead-letter
  queue, later.
- stopping (the task cancelled) receives nothing more and gives the handlers
  in flight up to `drain_seconds` to finish: a cancelled one's message comes
  back after its visibility timeout with one more receive counted, so a
  rolling restart should not spend them;
- the handler runs with the correlation id and trace context of the message
  attributes made current, so its logs and calls join the original trace.
- handlers must be idempotent (delivery is at least once); the reference
  handler keys its writes by event id.
- `platform_queue_messages_total{queue, outcome}` counts processed and failed
  handlings, `platform_queue_receive_errors_total{queue}` receives that failed
  (a consumer that cannot receive leaves messages to expire unseen, not to
  the dead-letter queue: alert on it); a registry of None: they go nowhere.

Errors of SQS itself (outage, throttling) are logged and retried after a
backoff; the loop never dies of them. Anchors: the AWS SQS developer guide
(long polling, visibility, redrive), Spring Cloud AWS's listener container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from prometheus_client import CollectorRegistry, Counter

from interceptors.correlation import HEADER as CORRELATION_HEADER
from interceptors.inbound import InboundWork, inbound_var
from interceptors.retry import RetryPolicy
from interceptors.tracing import PROPAGATOR, carrier

_log = logging.getLogger(__name__)
# SQS refuses (not trims) a visibility past 12 hours from the receive; the margin
# covers the time between SQS's receive and ours.
SQS_MAX_VISIBILITY = 43200
RECEIVE_MARGIN = 60


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
        max_retry_delay: int = 900,
        drain_seconds: float = 10.0,
        backoff: RetryPolicy | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.handler = handler
        self.max_in_flight = max_in_flight
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self.max_retry_delay = max_retry_delay
        self.drain_seconds = drain_seconds
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
        self._receive_errors = Counter(
            "platform_queue_receive_errors",
            "Receives from the queue that failed (access, network, throttling).",
            ["queue"],
            registry=registry,
        ).labels(queue)

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
                    self._receive_errors.inc()
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
            if self._working:
                await asyncio.wait(set(self._working), timeout=self.drain_seconds)
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
        received_at = asyncio.get_running_loop().time()
        receipt = message["ReceiptHandle"]
        receive_count = 1
        finished = asyncio.Event()
        keeper = asyncio.create_task(self._keep_invisible(receipt, finished))
        try:
            receive_count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
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
            # The keeper ends its extension in flight, if any, before the longer hiding
            # below: SQS applies the last call it gets, and the keeper's must not be it.
            finished.set()
            await keeper
            delay = retry_delay(
                receive_count,
                self.visibility_timeout,
                self.max_retry_delay,
                asyncio.get_running_loop().time() - received_at,
            )
            # Left on the queue: delivered again once hidden long enough, and
            # dead-lettered by the redrive policy after maxReceiveCount receives.
            _log.exception(
                "message handling failed",
                extra={"message_id": message.get("MessageId"), "retry_in_seconds": delay},
            )
            await self._hide(receipt, delay)
        finally:
            keeper.cancel()
            self._slots.release()

    async def _hide(self, receipt: str, seconds: int) -> None:
        """Keeps a failed message hidden `seconds` from now; if SQS cannot be told, the
        message comes back after its current timeout: sooner, never lost."""
        if seconds <= self.visibility_timeout:
            return  # the receive (or the keeper's last extension) hid it this long
        try:
            await self.sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=seconds
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:
            _log.warning("delaying a retry failed", extra={"error_type": type(error).__name__})

    async def _in_context(self, delivery: Delivery) -> None:
        token = otel_context.attach(PROPAGATOR.extract(carrier(delivery.attributes)))
        correlation_id = delivery.attributes.get(CORRELATION_HEADER) or ""
        inbound = inbound_var.set(InboundWork(correlation_id))
        try:
            await self.handler(delivery)
        finally:
            inbound_var.reset(inbound)
            otel_context.detach(token)

    async def _keep_invisible(self, receipt: str, finished: asyncio.Event) -> None:
        """Extends the message's visibility every half timeout until `finished` is set
        (between two extensions, never during one) or the task is cancelled."""
        while True:
            try:
                await asyncio.wait_for(finished.wait(), self.visibility_timeout / 2)
                return
            except TimeoutError:
                pass
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


def retry_delay(
    receive_count: int, visibility_timeout: int, longest: int, since_receive: float = 0.0
) -> int:
    """Seconds a message stays hidden after its `receive_count`-th receive failed,
    `since_receive` seconds after it: the visibility timeout doubled per earlier
    receive, at most `longest` and what SQS allows the receive (12 hours in all),
    and never less than the timeout (the receive hid it that long already)."""
    doubled = visibility_timeout << min(max(receive_count, 1) - 1, 16)
    allowed = SQS_MAX_VISIBILITY - RECEIVE_MARGIN - math.ceil(since_receive)
    return max(visibility_timeout, min(doubled, longest, allowed))
