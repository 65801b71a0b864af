"""A crash-safe orchestration saga engine on DynamoDB, with a transactional outbox.

A saga is a list of `Step`s, each an idempotent action with an optional
compensation. The engine keeps each saga's state machine in one DynamoDB item
and writes it after every step, so any process can resume any saga:

- `start()` creates the item once per saga id (a conditional put); a repeat
  with the same digest gets the existing saga, another digest `KeyReused`.
- `run()` drives a saga in a background task and waits for it up to a time
  limit. Only the holder of the saga's lease drives it: every write is
  conditioned on `lease_owner` and `version`, and a process that loses the
  lease stops. A second caller of `run()` on a saga leased elsewhere just
  polls the item until it ends.
- Forward: transient errors are retried (backoff, lease renewed) while the
  saga's own deadline lasts. A permanent error (the definition's `permanent()`
  gives its reason) compensates the steps done so far, in reverse. When the
  deadline passes during a step that has a compensation, the step's outcome is
  first made definite by repeating the (idempotent) action, then compensated;
  a step without compensation (the pivot, e.g. the final credit) is retried
  until it succeeds or fails permanently, never abandoned half-done.
  Compensations are retried until they succeed; one that fails permanently
  ends the saga FAILED with reason COMPENSATION_FAILED (logged at ERROR:
  someone must look).
- Settling: a step whose repeat cannot tell whether it took effect (its
  request was used before with other content: the definition's `unknowable`)
  keeps its saga running past the deadline. `settle()` records an
  operator's verdict, took effect or not, in the item; the driver loses its
  lease at its next write, and whoever resumes the saga repeats the step:
  only if the repeat is still unknowable does the verdict decide (history
  entry SETTLED; "not" fails the step with reason SETTLED, so the saga
  compensates what came before, or, for a compensation, ends
  COMPENSATION_FAILED). A repeat that succeeds or fails permanently decides
  by itself, and the verdict is set aside (history says so).
- Recovery: `recover_forever()` queries a sparse GSI (`unfinished`: hash
  `shard`, range `lease_until`) for sagas whose lease has passed, unfinished
  or with an unpublished event, and drives them. A killed process's sagas are
  resumed by any pod after `lease_seconds`.
- Metrics (`registry`): `platform_saga_finished_total{kind, status}`,
  `platform_saga_compensation_failed_total{kind}` (alert on it),
  `platform_saga_recovered_total`, and `platform_saga_oldest_running_seconds`:
  the age of the oldest saga this process drives. Past its deadline a saga
  retries only a pivot or a compensation, so one far older is stuck on a
  step that keeps failing (alert on it); a step still failing after 8, 16,
  32, ... retries is logged, with the error's type.
- Outbox: the write that ends a saga also stores its event in the item
  (`outbox`), in the same conditional write. The engine then publishes it and
  removes it; if the process dies in between, recovery finds the item still in
  the GSI and publishes it. Delivery is at least once; consumers deduplicate
  by event id (durable.consumer).

Anchors: Garcia-Molina & Salem's sagas, the transactional outbox pattern, and
AWS Step Functions' own leases on DynamoDB (Temporal-style "activity must be
idempotent"). Departure: no separate outbox table; one item per saga keeps the
state and its pending event in a single write, which DynamoDB makes atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import ClientError as AwsClientError
from prometheus_client import CollectorRegistry, Counter, Gauge

from durable.dynamo import Index, TableSpec, error_code, from_item, to_item, to_value
from interceptors.correlation import current_correlation_id
from interceptors.inbound import InboundWork, inbound_var
from interceptors.retry import RetryPolicy

RUNNING, COMPENSATING, COMPLETED, FAILED = "RUNNING", "COMPENSATING", "COMPLETED", "FAILED"
TERMINAL = (COMPLETED, FAILED)
COMPENSATION_FAILED = "COMPENSATION_FAILED"
SETTLED = "SETTLED"  # the failure reason of a step an operator settled as not taken effect
UNFINISHED_INDEX = "unfinished"

_log = logging.getLogger(__name__)


def saga_table(name: str) -> TableSpec:
    return TableSpec(
        name,
        "saga_id",
        indexes=(Index(UNFINISHED_INDEX, "due_shard", "lease_until", "N"),),
    )


@dataclass
class Saga:
    saga_id: str
    kind: str
    payload: dict[str, Any]
    status: str = RUNNING
    step: int = 0
    # COMPENSATING only: whether step `step` may or may not have taken effect.
    uncertain: bool = False
    failure_reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    context: dict[str, str] = field(default_factory=dict)
    deadline_ms: int = 0
    created_us: int = 0
    updated_us: int = 0
    version: int = 0
    outbox: dict[str, Any] | None = None
    # An operator's verdict on the step the saga is stuck on (`SagaEngine.settle`).
    settlement: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


Action = Callable[[Saga], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    name: str
    action: Action
    compensation: Action | None = None
    compensation_name: str = ""


class SagaDefinition(Protocol):
    kind: str
    steps: Sequence[Step]

    def permanent(self, error: BaseException) -> str | None:
        """The reason if `error` is a permanent failure of a step; None if it may pass."""

    def unknowable(self, error: BaseException) -> bool:
        """Whether `error` says that repeating the step cannot tell whether it took effect
        (its request was used before with other content): the one failure an operator's
        verdict (`SagaEngine.settle`) may decide."""

    def event(self, saga: Saga) -> dict[str, Any]:
        """The event the saga's end publishes (a JSON-able dict with an `event_id`)."""


class Publisher(Protocol):
    async def publish(self, event: Mapping[str, Any], context: Mapping[str, str]) -> None: ...


class KeyReused(Exception):
    """The saga id exists for a different request."""


class LeaseLost(Exception):
    """Another process holds the saga now."""


class SettleRefused(Exception):
    """`settle` does not apply: no such saga, it has ended, it is not past its deadline,
    or it is not stuck on the step named. The message says which."""


class _Overdue(Exception):
    """A step's transient failures outlasted the saga's deadline."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _parse(item: Mapping[str, Any]) -> tuple[Saga, str]:
    """The saga stored in `item`, and the digest of the request that created it."""
    values = from_item(item)
    stored: dict[str, Any] = {
        field.name: values.get(field.name) for field in dataclasses.fields(Saga)
    }
    saga = Saga(**stored)
    return saga, values["digest"]


class SagaEngine:
    def __init__(
        self,
        dynamodb: Any,
        table: str,
        definitions: Sequence[SagaDefinition],
        publisher: Publisher,
        *,
        lease_seconds: float = 10.0,
        shards: int = 4,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.dynamodb = dynamodb
        self.table = table
        self.definitions = {definition.kind: definition for definition in definitions}
        self.publisher = publisher
        self.owner = str(uuid.uuid4())
        self.lease_seconds = lease_seconds
        self.shards = shards
        self.retry = retry or RetryPolicy(max_attempts=1_000_000, max_backoff=2.0)
        self._clock = clock
        self._driving: dict[str, asyncio.Task[Saga]] = {}
        self._finished = Counter(
            "platform_saga_finished",
            "Sagas ended, by kind and status (COMPLETED, FAILED).",
            ["kind", "status"],
            registry=registry,
        )
        self._compensation_failed = Counter(
            "platform_saga_compensation_failed",
            "Sagas whose compensation failed permanently: someone must look.",
            ["kind"],
            registry=registry,
        )
        self._recovered = Counter(
            "platform_saga_recovered",
            "Sagas taken up by the recovery loop (lease passed or event unpublished).",
            registry=registry,
        )
        for kind in self.definitions:
            # Each series exists from the start, at 0: an alert on increase() then sees
            # a process's first failure, which is usually its only one.
            self._compensation_failed.labels(kind)
            for status in TERMINAL:
                self._finished.labels(kind, status)
        self._running: dict[str, Saga] = {}
        Gauge(
            "platform_saga_oldest_running_seconds",
            "Age of the oldest saga this process drives (0: none); one far past the "
            "sagas' deadline is stuck retrying a step.",
            registry=registry,
        ).set_function(self._oldest_running_seconds)

    def _oldest_running_seconds(self) -> float:
        oldest = min((saga.created_us for saga in list(self._running.values())), default=None)
        return 0.0 if oldest is None else max(self._clock() - oldest / 1e6, 0.0)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- creating and reading ------------------------------------------------------

    async def start(
        self,
        saga_id: str,
        kind: str,
        digest: str,
        payload: dict[str, Any],
        deadline_seconds: float,
        context: Mapping[str, str],
    ) -> tuple[Saga, bool]:
        """The saga, and whether this call created it; a new saga is created already
        leased to this process, so `run(..., leased=saga)` skips taking the lease."""
        now_ms = self._now_ms()
        saga = Saga(
            saga_id,
            kind,
            payload,
            context=dict(context),
            deadline_ms=now_ms + int(deadline_seconds * 1000),
            created_us=now_ms * 1000,
            updated_us=now_ms * 1000,
        )
        item = to_item(dataclasses.asdict(saga))
        lease = {
            "digest": digest,
            "due_shard": self._shard(saga_id),
            "lease_owner": self.owner,
            "lease_until": now_ms + int(self.lease_seconds * 1000),
        }
        item.update(to_item(lease))
        try:
            await self.dynamodb.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(saga_id)",
            )
            return saga, True
        except AwsClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise
        found = await self._read(saga_id)
        if found is None or found[1] != digest:
            raise KeyReused(saga_id)
        return found[0], False

    async def get(self, saga_id: str) -> Saga | None:
        found = await self._read(saga_id)
        return None if found is None else found[0]

    def stuck_on(self, saga: Saga) -> str | None:
        """The step or compensation the saga is retrying now, or None (ended, or between
        steps)."""
        steps = self.definitions[saga.kind].steps
        if saga.finished or not 0 <= saga.step < len(steps):
            return None
        step = steps[saga.step]
        if saga.status == RUNNING or saga.uncertain:
            return step.name
        return step.compensation_name if step.compensation is not None else None

    async def settle(self, saga_id: str, step: str, took_effect: bool, reason: str) -> Saga:
        """Records an operator's verdict on `step`, the step a saga past its deadline keeps
        retrying: whether it took effect. The process driving the saga loses its lease at
        its next write; whoever resumes it repeats the step once more, and the verdict
        decides only if that repeat fails as the definition's `unknowable` says (its
        request was used before with other content, so no repeat can tell). A repeat
        that succeeds or fails permanently decides by itself, the verdict set aside (an
        attempt in flight when the verdict landed may have taken effect: its repeat is
        answered as it was). While the repeats fail otherwise (the dependency down), the
        verdict waits. Raises SettleRefused."""
        for _ in range(20):  # the driver renews the lease between attempts: read again
            found = await self._read(saga_id)
            if found is None:
                raise SettleRefused(f"no saga {saga_id}")
            saga = found[0]
            if saga.finished:
                raise SettleRefused(f"saga {saga_id} has ended: {saga.status}")
            if self._now_ms() < saga.deadline_ms:
                raise SettleRefused(f"saga {saga_id} is not past its deadline: it may finish")
            current = self.stuck_on(saga)
            if current is None:
                raise SettleRefused(f"saga {saga_id} is not retrying a step")
            if current != step:
                raise SettleRefused(f"saga {saga_id} is on {current}, not {step}")
            if saga.settlement is not None:
                raise SettleRefused(f"saga {saga_id} has a verdict pending on {current}")
            settlement = {"step": step, "took_effect": took_effect, "reason": reason}
            try:
                await self.dynamodb.update_item(
                    TableName=self.table,
                    Key=to_item({"saga_id": saga_id}),
                    UpdateExpression="SET settlement = :settlement, version = version + :one",
                    ConditionExpression="version = :version",
                    ExpressionAttributeValues=to_item(
                        {":settlement": settlement, ":version": saga.version, ":one": 1}
                    ),
                )
            except AwsClientError as error:
                if error_code(error) != "ConditionalCheckFailedException":
                    raise
                await asyncio.sleep(0.05)
                continue
            saga.settlement = settlement
            saga.version += 1
            return saga
        raise SettleRefused(f"saga {saga_id} kept changing: try again")

    async def _read(self, saga_id: str) -> tuple[Saga, str] | None:
        answer = await self.dynamodb.get_item(
            TableName=self.table, Key=to_item({"saga_id": saga_id}), ConsistentRead=True
        )
        if "Item" not in answer:
            return None
        return _parse(answer["Item"])

    def _shard(self, saga_id: str) -> str:
        return str(uuid.UUID(saga_id).int % self.shards)

    # -- leases and writes ---------------------------------------------------------

    async def _acquire(self, saga_id: str) -> Saga | None:
        """Takes the lease if it is free (or already ours); None if someone else holds it."""
        now_ms = self._now_ms()
        try:
            answer = await self.dynamodb.update_item(
                TableName=self.table,
                Key=to_item({"saga_id": saga_id}),
                UpdateExpression="SET lease_owner = :me, lease_until = :until, "
                "version = version + :one",
                ConditionExpression="attribute_exists(due_shard) AND "
                "(lease_until < :now OR lease_owner = :me)",
                ExpressionAttributeValues=to_item(
                    {
                        ":me": self.owner,
                        ":until": now_ms + int(self.lease_seconds * 1000),
                        ":now": now_ms,
                        ":one": 1,
                    }
                ),
                ReturnValues="ALL_NEW",
            )
        except AwsClientError as error:
            if error_code(error) == "ConditionalCheckFailedException":
                return None
            raise
        return _parse(answer["Attributes"])[0]

    async def _save(self, saga: Saga) -> None:
        """Writes the saga's state if we still hold the lease, renewing it (or ending it)."""
        now_ms = self._now_ms()
        values: dict[str, Any] = {
            ":me": self.owner,
            ":version": saga.version,
            ":next": saga.version + 1,
            ":status": saga.status,
            ":step": saga.step,
            ":uncertain": saga.uncertain,
            ":reason": saga.failure_reason,
            ":history": saga.history,
            ":updated": saga.updated_us,
            ":settlement": saga.settlement,
        }
        sets = [
            "#status = :status",
            "step = :step",
            "uncertain = :uncertain",
            "failure_reason = :reason",
            "history = :history",
            "updated_us = :updated",
            "settlement = :settlement",
            "version = :next",
        ]
        removes = []
        if saga.finished and saga.outbox is None:
            removes = ["due_shard", "lease_until", "lease_owner"]  # leaves the unfinished index
        else:
            # Renewed; a finished saga whose event is not yet published stays in the
            # index, so recovery publishes it if this process dies before it does.
            values[":until"] = now_ms + int(self.lease_seconds * 1000)
            sets.append("lease_until = :until")
        if saga.outbox is not None:
            values[":outbox"] = saga.outbox
            sets.append("outbox = :outbox")
        expression = "SET " + ", ".join(sets)
        if removes:
            expression += " REMOVE " + ", ".join(removes)
        try:
            await self.dynamodb.update_item(
                TableName=self.table,
                Key=to_item({"saga_id": saga.saga_id}),
                UpdateExpression=expression,
                ConditionExpression="lease_owner = :me AND version = :version",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=to_item(values),
            )
        except AwsClientError as error:
            if error_code(error) == "ConditionalCheckFailedException":
                raise LeaseLost(saga.saga_id) from None
            raise
        saga.version += 1
        if saga.finished:  # the one write that ends it, counted once it has landed
            self._finished.labels(saga.kind, saga.status).inc()
            if saga.failure_reason.startswith(COMPENSATION_FAILED):
                self._compensation_failed.labels(saga.kind).inc()

    async def _published(self, saga: Saga) -> None:
        await self.dynamodb.update_item(
            TableName=self.table,
            Key=to_item({"saga_id": saga.saga_id}),
            UpdateExpression="REMOVE outbox, due_shard, lease_until, lease_owner "
            "SET version = version + :one",
            ConditionExpression="lease_owner = :me AND version = :version",
            ExpressionAttributeValues=to_item(
                {":me": self.owner, ":version": saga.version, ":one": 1}
            ),
        )
        saga.outbox = None
        saga.version += 1

    # -- driving -------------------------------------------------------------------

    async def run(self, saga_id: str, wait_seconds: float, leased: Saga | None = None) -> Saga:
        """Drives the saga (in the background) and returns its state when it has ended
        or when `wait_seconds` have passed, whichever is first. `leased`: the saga as
        `start()` created it (leased to us), to drive without taking the lease again."""
        until = time.monotonic() + wait_seconds
        task = self._driving.get(saga_id) or self._spawn(saga_id, leased)
        done, _ = await asyncio.wait({task}, timeout=max(wait_seconds, 0.0))
        if done:
            saga = task.result()
            if saga.finished:
                return saga
        # Someone else holds it (or it is still going): watch the item until it ends.
        while True:
            current = await self.get(saga_id)
            assert current is not None
            if current.finished or time.monotonic() >= until:
                return current
            await asyncio.sleep(min(0.05, max(until - time.monotonic(), 0.0)))

    def _spawn(self, saga_id: str, leased: Saga | None = None) -> asyncio.Task[Saga]:
        # The saga outlives the call that started it: it keeps that call's trace and
        # correlation ids, not its deadline (its own is `deadline_ms`).
        context = contextvars.copy_context()
        correlation_id = current_correlation_id() or ""
        context.run(inbound_var.set, InboundWork(correlation_id))
        task = asyncio.create_task(
            self._drive(saga_id, leased), name=f"saga-{saga_id}", context=context
        )
        self._driving[saga_id] = task

        def forget(done: asyncio.Task[Saga]) -> None:
            self._driving.pop(saga_id, None)
            if not done.cancelled() and done.exception() is not None:
                # e.g. DynamoDB unreachable before the lease was taken: recovery retries.
                _log.warning(
                    "saga not driven", extra={"saga_id": saga_id}, exc_info=done.exception()
                )

        task.add_done_callback(forget)
        return task

    async def _drive(self, saga_id: str, leased: Saga | None = None) -> Saga:
        saga = leased or await self._acquire(saga_id)
        if saga is None:
            found = await self.get(saga_id)
            assert found is not None
            return found
        definition = self.definitions[saga.kind]
        self._running[saga_id] = saga
        try:
            while not saga.finished:
                if saga.status == RUNNING:
                    await self._forward(definition, saga)
                else:
                    await self._compensate(definition, saga)
            if saga.outbox is not None:
                await self.publisher.publish(saga.outbox, saga.context)
                await self._published(saga)
        except LeaseLost:
            _log.warning("saga lease lost", extra={"saga_id": saga_id})
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease runs out and recovery resumes the saga; nothing is lost.
            _log.warning("saga paused until recovery", extra={"saga_id": saga_id}, exc_info=True)
        finally:
            self._running.pop(saga_id, None)
        return saga

    def _record(self, saga: Saga, name: str, outcome: str, detail: str = "") -> None:
        """Adds a history entry; its time is the saga's `updated_us` (a lease renewal is no
        change), and the end event carries the time of the last entry."""
        saga.updated_us = self._now_ms() * 1000
        saga.history.append(
            {"name": name, "outcome": outcome, "detail": detail, "time_us": saga.updated_us}
        )

    async def _attempt(
        self, saga: Saga, name: str, action: Action, definition: SagaDefinition
    ) -> str | None:
        """Runs `action` (step or compensation `name`) until it succeeds (None) or fails
        permanently (the reason); retries transient errors while `keep_trying` holds,
        renewing the lease. An operator's verdict on `name` decides when the action fails
        as unknowable, and is set aside when the action's own answer decides."""
        retry_number = 0
        while True:
            try:
                await action(saga)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                reason = definition.permanent(error)
                verdict = self._verdict(saga, name)
                if reason is not None:
                    if verdict is not None:
                        self._set_aside(saga, name, f"the step failed: {reason}")
                    return reason
                if verdict is not None and definition.unknowable(error):
                    return self._apply(saga, name, verdict)
                retry_number += 1
                if not self._keep_trying(saga, definition):
                    raise _Overdue(type(error).__name__) from error
                if retry_number >= 8 and retry_number & (retry_number - 1) == 0:
                    _log.warning(
                        "saga step still failing",
                        extra={
                            "saga_id": saga.saga_id,
                            "step": name,
                            "retries": retry_number,
                            "error_type": type(error).__name__,
                            "error_message": str(error)[:300],
                        },
                    )
                await asyncio.sleep(self.retry.backoff(min(retry_number, 8)))
                await self._save(saga)  # renews the lease
            else:
                if self._verdict(saga, name) is not None:
                    self._set_aside(saga, name, "the step succeeded when repeated")
                return None

    @staticmethod
    def _verdict(saga: Saga, name: str) -> dict[str, Any] | None:
        settlement = saga.settlement
        return settlement if settlement is not None and settlement["step"] == name else None

    def _set_aside(self, saga: Saga, name: str, why: str) -> None:
        """The step's own answer decided: the operator's verdict is dropped, and says so."""
        saga.settlement = None
        self._record(saga, name, "SETTLED", f"verdict not applied: {why}")
        _log.warning(
            "saga step's verdict not applied", extra={"saga_id": saga.saga_id, "step": name}
        )

    def _apply(self, saga: Saga, name: str, settlement: dict[str, Any]) -> str | None:
        """An operator's verdict on a step whose repeat cannot tell: took effect is a
        success, did not is a permanent failure, so the saga goes on as after either."""
        saga.settlement = None
        took_effect = bool(settlement["took_effect"])
        verdict = "took effect" if took_effect else "did not take effect"
        self._record(saga, name, "SETTLED", f"{verdict}: {settlement['reason']}")
        _log.warning(
            "saga step settled by an operator",
            extra={"saga_id": saga.saga_id, "step": name, "took_effect": took_effect},
        )
        return None if took_effect else f"{SETTLED}: {settlement['reason']}"

    def _keep_trying(self, saga: Saga, definition: SagaDefinition) -> bool:
        if saga.status == COMPENSATING:
            return True  # compensations must finish
        step = definition.steps[saga.step]
        return step.compensation is None or self._now_ms() < saga.deadline_ms

    async def _forward(self, definition: SagaDefinition, saga: Saga) -> None:
        step = definition.steps[saga.step]
        try:
            reason = await self._attempt(saga, step.name, step.action, definition)
        except _Overdue as overdue:
            self._record(saga, step.name, "TIMED_OUT", overdue.reason)
            self._begin_compensation(saga, "DEADLINE_EXCEEDED", uncertain=True)
            await self._save(saga)
            return
        if reason is not None:
            self._record(saga, step.name, "FAILED", reason)
            saga.step -= 1
            self._begin_compensation(saga, reason, uncertain=False)
            if saga.step < 0:
                self._finish(definition, saga, FAILED)
            await self._save(saga)
            return
        self._record(saga, step.name, "DONE")
        saga.step += 1
        if saga.step == len(definition.steps):
            self._finish(definition, saga, COMPLETED)
        await self._save(saga)

    def _begin_compensation(self, saga: Saga, reason: str, *, uncertain: bool) -> None:
        saga.status = COMPENSATING
        saga.failure_reason = reason
        saga.uncertain = uncertain

    def _finish(self, definition: SagaDefinition, saga: Saga, status: str) -> None:
        saga.status = status
        saga.uncertain = False
        saga.outbox = definition.event(saga)

    async def _compensate(self, definition: SagaDefinition, saga: Saga) -> None:
        if saga.step < 0:
            self._finish(definition, saga, FAILED)
            await self._save(saga)
            return
        step = definition.steps[saga.step]
        if saga.uncertain:
            # Make the step's outcome definite first: its action is idempotent.
            reason = await self._attempt(saga, step.name, step.action, definition)
            saga.uncertain = False
            if reason is not None:  # it never took effect: nothing to undo
                self._record(saga, step.name, "FAILED", reason)
                saga.step -= 1
                await self._save(saga)
                return
            self._record(saga, step.name, "DONE")
        if step.compensation is not None:
            reason = await self._attempt(
                saga, step.compensation_name, step.compensation, definition
            )
            if reason is not None:
                self._record(saga, step.compensation_name, "FAILED", reason)
                _log.error(
                    "saga compensation failed: manual action needed",
                    extra={"saga_id": saga.saga_id, "step": step.compensation_name},
                )
                saga.failure_reason = f"{COMPENSATION_FAILED}: {reason}"
                self._finish(definition, saga, FAILED)
                await self._save(saga)
                return
            self._record(saga, step.compensation_name, "DONE")
        saga.step -= 1
        if saga.step < 0:
            self._finish(definition, saga, FAILED)
        await self._save(saga)

    # -- recovery ------------------------------------------------------------------

    async def recover_once(self, limit: int = 25) -> int:
        """Drives the sagas whose lease has passed; returns how many were taken up."""
        now_ms = self._now_ms()
        due: list[str] = []
        for shard in range(self.shards):
            answer = await self.dynamodb.query(
                TableName=self.table,
                IndexName=UNFINISHED_INDEX,
                KeyConditionExpression="due_shard = :shard AND lease_until < :now",
                ExpressionAttributeValues={
                    ":shard": to_value(str(shard)),
                    ":now": to_value(now_ms),
                },
                Limit=limit,
            )
            due += [from_item(item)["saga_id"] for item in answer.get("Items", [])]
        started = [saga_id for saga_id in due if saga_id not in self._driving]
        for saga_id in started:
            self._spawn(saga_id)
        self._recovered.inc(len(started))
        return len(started)

    async def recover_forever(self, interval: float = 1.0) -> None:
        while True:
            try:
                await self.recover_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                _log.warning(
                    "saga recovery sweep failed", extra={"error_type": type(error).__name__}
                )
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Stops driving (leases run out; another process resumes the sagas)."""
        tasks = list(self._driving.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
