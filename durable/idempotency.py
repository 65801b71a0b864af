"""Idempotent writes by `request_id` (AIP-155): one effect per key, the same answer to every repeat.

`Idempotency.run(scope, request_id, request, effect)`:

1. claims the key `scope:request_id` in a store, with a digest of the request
   and a lease. A key already DONE replays its recorded outcome (the response,
   or the permanent error, raised again as `Replayed`); a key recorded for a
   different request body is refused (INVALID_ARGUMENT, reason
   IDEMPOTENCY_KEY_REUSED); a key whose first call is still running is waited
   for (polling, within the inbound deadline), then ABORTED with RetryInfo.
   A claim whose holder died (lease passed) is taken over.
2. runs the effect. A store that supports it lets the effect commit the
   outcome in the same transaction as its own writes (`DynamoIdempotencyStore.
   completion`, then `claim.committed = True`): the effect and its record
   cannot part. Otherwise the runner records the outcome right after.
3. permanent errors (a `ClientError` that is not transient) are recorded as the
   outcome; anything else (a transient failure, a crash) releases the claim so
   that a retry may run the effect again. Releasing is conditional on the claim still being ours and
   still PENDING, so it never undoes an outcome that did commit.

Records expire after `ttl` (DynamoDB TTL attribute `expires_at`). Anchors:
Stripe's idempotency keys, AWS Powertools' idempotency utility (in-progress
records with an expiry). Stores: `DynamoIdempotencyStore` (shared by all pods)
and `MemoryIdempotencyStore` (one process: unit tests, single-process services).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from botocore.exceptions import ClientError as AwsClientError
from google.protobuf.message import Message
from google.rpc import status_pb2

from durable.dynamo import error_code, from_item, to_item, to_value
from interceptors.deadline import remaining_budget
from interceptors.errors import (
    Aborted,
    ClientError,
    FieldViolation,
    InvalidArgument,
    Replayed,
    to_status,
)

Response = TypeVar("Response", bound=Message)
_log = logging.getLogger(__name__)
PENDING = "PENDING"
DONE = "DONE"


@dataclass
class Claim:
    key: str
    digest: str
    token: str
    # Set by an effect that committed the outcome in its own transaction.
    committed: bool = False


@dataclass(frozen=True)
class Outcome:
    """What the first call answered: a serialized response or a `google.rpc.Status`."""

    response: bytes | None = None
    error: bytes | None = None


class KeyReused(Exception):
    """The key was claimed for a different request."""


class InProgress(Exception):
    """The key's first call is still running."""


class IdempotencyStore(Protocol):
    async def claim(self, key: str, digest: str, lease_seconds: float) -> Claim | Outcome:
        """A new claim, or the recorded outcome; raises KeyReused or InProgress."""

    async def complete(self, claim: Claim, outcome: Outcome) -> None: ...

    async def release(self, claim: Claim) -> None: ...


KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"


def key_reused(field: str = "request_id") -> InvalidArgument:
    """The answer to a request_id repeated with a different request body."""
    return InvalidArgument(
        "request_id was already used with a different request",
        [FieldViolation(field, "already used with a different request body")],
        reason=KEY_REUSED,
    )


def digest(request: Message) -> str:
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


class Idempotency:
    def __init__(
        self, store: IdempotencyStore, lease_seconds: float = 30.0, poll_seconds: float = 0.05
    ) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds

    async def run(
        self,
        scope: str,
        request_id: str,
        request: Message,
        response_type: type[Response],
        effect: Callable[[Claim], Awaitable[Response]],
    ) -> Response:
        claimed = await self._claim(f"{scope}:{request_id}", digest(request))
        if isinstance(claimed, Outcome):
            return _replay(claimed, response_type)
        try:
            response = await effect(claimed)
        except ClientError as error:
            if error.transient:  # e.g. ABORTED with RetryInfo: a retry may succeed
                await asyncio.shield(self._release_quietly(claimed))
            elif not claimed.committed:
                failure = to_status(error, domain="").SerializeToString()
                await self.store.complete(claimed, Outcome(error=failure))
            raise
        except BaseException:
            if not claimed.committed:
                await asyncio.shield(self._release_quietly(claimed))
            raise
        if not claimed.committed:
            await self.store.complete(claimed, Outcome(response=response.SerializeToString()))
        return response

    async def _claim(self, key: str, digest: str) -> Claim | Outcome:
        while True:
            try:
                return await self.store.claim(key, digest, self.lease_seconds)
            except KeyReused:
                raise key_reused() from None
            except InProgress:
                budget = remaining_budget()
                if budget is not None and budget < 2 * self.poll_seconds:
                    raise Aborted(
                        "a call with this request_id is still in progress",
                        reason="REQUEST_IN_PROGRESS",
                        retry_after=self.poll_seconds * 4,
                    ) from None
                await asyncio.sleep(self.poll_seconds)

    async def _release_quietly(self, claim: Claim) -> None:
        try:
            await self.store.release(claim)
        except Exception as error:  # the lease expires by itself; a retry then takes over
            _log.warning(
                "idempotency claim not released", extra={"error_type": type(error).__name__}
            )


def _replay(outcome: Outcome, response_type: type[Response]) -> Response:
    if outcome.error is not None:
        raise Replayed(status_pb2.Status.FromString(outcome.error))
    return response_type.FromString(outcome.response or b"")


class MemoryIdempotencyStore:
    """One process's records; for unit tests and single-process use."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._records: dict[str, tuple[str, str, float, Outcome | None]] = {}

    async def claim(self, key: str, digest: str, lease_seconds: float) -> Claim | Outcome:
        now = self._clock()
        record = self._records.get(key)
        if record is not None:
            recorded_digest, _, lease_until, outcome = record
            if recorded_digest != digest:
                raise KeyReused(key)
            if outcome is not None:
                return outcome
            if lease_until > now:
                raise InProgress(key)
        claim = Claim(key, digest, str(uuid.uuid4()))
        self._records[key] = (digest, claim.token, now + lease_seconds, None)
        return claim

    async def complete(self, claim: Claim, outcome: Outcome) -> None:
        record = self._records.get(claim.key)
        if record is not None and record[1] == claim.token:
            self._records[claim.key] = (claim.digest, claim.token, 0.0, outcome)

    async def release(self, claim: Claim) -> None:
        record = self._records.get(claim.key)
        if record is not None and record[1] == claim.token and record[3] is None:
            del self._records[claim.key]


class DynamoIdempotencyStore:
    """Records in a DynamoDB table keyed by `key`, expiring through the TTL attribute
    `expires_at`. `dynamodb` is a `clients.aws.ResilientAwsClient`."""

    def __init__(
        self,
        dynamodb: Any,
        table: str,
        ttl_seconds: float = 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dynamodb = dynamodb
        self.table = table
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    async def claim(self, key: str, digest: str, lease_seconds: float) -> Claim | Outcome:
        now = self._clock()
        claim = Claim(key, digest, str(uuid.uuid4()))
        try:
            await self.dynamodb.put_item(
                TableName=self.table,
                Item=to_item(
                    {
                        "key": key,
                        "digest": digest,
                        "state": PENDING,
                        "token": claim.token,
                        "lease_until": int(now + lease_seconds),
                        "expires_at": int(now + self.ttl_seconds),
                    }
                ),
                # New, or a PENDING claim of the same request whose holder's lease has passed.
                ConditionExpression="attribute_not_exists(#key) OR "
                "(#state = :pending AND lease_until < :now AND digest = :digest)",
                ExpressionAttributeNames={"#key": "key", "#state": "state"},
                ExpressionAttributeValues={
                    ":pending": to_value(PENDING),
                    ":now": to_value(int(now)),
                    ":digest": to_value(digest),
                },
            )
            return claim
        except AwsClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise
        found = await self.dynamodb.get_item(
            TableName=self.table, Key=to_item({"key": key}), ConsistentRead=True
        )
        record = from_item(found.get("Item") or {})
        if not record:  # released between our put and get: claim again
            return await self.claim(key, digest, lease_seconds)
        if record["digest"] != digest:
            raise KeyReused(key)
        if record.get("token") == claim.token:  # our own put, retried after a lost answer
            return claim
        if record["state"] == DONE:
            return Outcome(response=record.get("answer"), error=record.get("failure"))
        raise InProgress(key)

    def completion(self, claim: Claim, outcome: Outcome) -> dict[str, Any]:
        """The `TransactWriteItems` element that records `outcome`, for an effect's own
        transaction; it fails (cancelling the transaction) if the claim is no longer ours."""
        values: dict[str, Any] = {
            ":done": DONE,
            ":pending": PENDING,
            ":token": claim.token,
            ":expires": int(self._clock() + self.ttl_seconds),
        }
        assignments = ["#state = :done", "expires_at = :expires"]
        for name, value in (("answer", outcome.response), ("failure", outcome.error)):
            if value is not None:
                values[f":{name}"] = value
                assignments.append(f"{name} = :{name}")
        return {
            "Update": {
                "TableName": self.table,
                "Key": to_item({"key": claim.key}),
                "UpdateExpression": "SET " + ", ".join(assignments) + " REMOVE lease_until",
                # Still ours and still PENDING: a write repeated after a lost answer
                # cannot record (or apply) a second time.
                "ConditionExpression": "#token = :token AND #state = :pending",
                "ExpressionAttributeNames": {"#state": "state", "#token": "token"},
                "ExpressionAttributeValues": to_item(values),
            }
        }

    async def complete(self, claim: Claim, outcome: Outcome) -> None:
        update = self.completion(claim, outcome)["Update"]
        try:
            await self.dynamodb.update_item(**update)
        except AwsClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise  # someone took the claim over after our lease: their outcome stands

    async def release(self, claim: Claim) -> None:
        try:
            await self.dynamodb.delete_item(
                TableName=self.table,
                Key=to_item({"key": claim.key}),
                ConditionExpression="#token = :token AND #state = :pending",
                ExpressionAttributeNames={"#token": "token", "#state": "state"},
                ExpressionAttributeValues=to_item({":token": claim.token, ":pending": PENDING}),
            )
        except AwsClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise
