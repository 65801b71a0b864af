"""The accounts table: one item per account, changed only by conditional writes.

Item: `account_id` (key), `owner`, `currency_code`, `balance` (minor units),
`state` (OPEN/CLOSED), `holds` (the ids of its holds, a list), `version`,
`created_us`, `updated_us`.

Every change is optimistic: read the item (consistent read), check the
business rules against that exact version, then write the new item in a
`TransactWriteItems` conditioned on `version` being unchanged, together with
the idempotency record of the request. A concurrent writer makes the
condition fail and the change is re-read and re-checked, so no update is
lost and a balance can never go negative; the response (the account as
written) and the recorded outcome are exact. A change that releases a hold on
another account (a transfer's credit) reads and writes that account the same
way, in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError as AwsClientError

from durable.dynamo import cancellation_codes, error_code, from_item, to_item
from interceptors.errors import Aborted, NotFound
from ledger.v1 import accounts_pb2 as pb

STATES = {pb.ACCOUNT_STATE_OPEN: "OPEN", pb.ACCOUNT_STATE_CLOSED: "CLOSED"}
STATE_OF = {name: state for state, name in STATES.items()}
MAX_CONFLICT_RETRIES = 50


def account_of(item: dict[str, Any]) -> tuple[pb.Account, int]:
    values = from_item(item)
    account = pb.Account(
        account_id=values["account_id"],
        owner=values["owner"],
        currency_code=values["currency_code"],
        balance_minor_units=values["balance"],
        state=STATE_OF[values["state"]],
        hold_ids=values.get("holds", []),  # items written before holds existed have none
    )
    account.create_time.FromMicroseconds(values["created_us"])
    account.update_time.FromMicroseconds(values["updated_us"])
    return account, values["version"]


def item_of(account: pb.Account, version: int) -> dict[str, Any]:
    return to_item(
        {
            "account_id": account.account_id,
            "owner": account.owner,
            "currency_code": account.currency_code,
            "balance": account.balance_minor_units,
            "state": STATES[account.state],
            "holds": list(account.hold_ids),
            "version": version,
            "created_us": account.create_time.ToMicroseconds(),
            "updated_us": account.update_time.ToMicroseconds(),
        }
    )


def drop_hold(account: pb.Account, hold_id: str) -> bool:
    """Releases the hold if the account has it; whether it had."""
    if hold_id not in account.hold_ids:
        return False
    account.hold_ids.remove(hold_id)
    return True


def conflict(error: BaseException) -> bool:
    """DynamoDB refused a transaction for a concurrent one on the same items: retry it."""
    return "TransactionConflict" in cancellation_codes(error) or (
        error_code(error) == "TransactionInProgressException"
    )


def contended() -> Aborted:
    return Aborted(
        "the account is changing too often, try again",
        reason="ACCOUNT_CONTENDED",
        retry_after=0.1,
    )


def not_found(account_id: str) -> NotFound:
    return NotFound(
        "account not found",
        resource_type="ledger.v1.Account",
        resource_name=f"accounts/{account_id}",
        reason="ACCOUNT_NOT_FOUND",
    )


class AccountsTable:
    def __init__(self, dynamodb: Any, name: str) -> None:
        self.dynamodb = dynamodb
        self.name = name

    async def get(self, account_id: str) -> tuple[pb.Account, int]:
        found = await self.dynamodb.get_item(
            TableName=self.name, Key=to_item({"account_id": account_id}), ConsistentRead=True
        )
        if "Item" not in found:
            raise not_found(account_id)
        return account_of(found["Item"])

    async def create(self, account: pb.Account, also: dict[str, Any]) -> None:
        """Writes a new account and `also` (the idempotency record) in one transaction."""
        put = {
            "Put": {
                "TableName": self.name,
                "Item": item_of(account, 1),
                "ConditionExpression": "attribute_not_exists(account_id)",
            }
        }
        try:
            await self._transact([put, also], token=account.account_id)
        except AwsClientError as error:
            if conflict(error):
                raise contended() from None
            raise

    async def change(
        self,
        account_id: str,
        apply: Callable[[pb.Account], None],
        also: Callable[[pb.Account], dict[str, Any]],
        token: str,
        release: pb.Hold | None = None,
    ) -> pb.Account:
        """Applies `apply` (which checks the rules and may raise) to the current account,
        releases `release` (on this account or another), and writes the result with
        `also(result)` in one transaction; re-reads on conflict."""
        for attempt in range(MAX_CONFLICT_RETRIES):
            account, version = await self.get(account_id)
            apply(account)
            other: list[dict[str, Any]] = []
            token_key = f"{attempt}/{version}"
            if release is not None and release.account_id == account_id:
                drop_hold(account, release.hold_id)
            elif release is not None:
                held, held_version = await self.get(release.account_id)
                if drop_hold(held, release.hold_id):  # nothing to write if it is not there
                    held.update_time.CopyFrom(account.update_time)
                    other.append(self._put(held, held_version))
                    token_key += f"/{held_version}"
            # The record (second: _transact reads its condition's failure) holds the
            # account as written.
            writes = [self._put(account, version), also(account), *other]
            try:
                # A token per attempt: DynamoDB refuses a token reused for different
                # items (IdempotentParameterMismatch), and each attempt writes its own
                # update_time, even over the same versions after a TransactionConflict.
                await self._transact(writes, token=str(uuid.uuid5(uuid.UUID(token), token_key)))
                return account
            except AwsClientError as error:
                # An account changed since it was read (the record's own condition is
                # handled by _transact): read again.
                stale = "ConditionalCheckFailed" in cancellation_codes(error)
                if not stale and not conflict(error):
                    raise
        raise contended()

    def _put(self, account: pb.Account, version: int) -> dict[str, Any]:
        """The write of `account` over `version`, which fails if it changed meanwhile."""
        return {
            "Put": {
                "TableName": self.name,
                "Item": item_of(account, version + 1),
                "ConditionExpression": "version = :version",
                "ExpressionAttributeValues": to_item({":version": version}),
            }
        }

    async def _transact(self, items: list[dict[str, Any]], token: str) -> None:
        try:
            await self.dynamodb.transact_write_items(TransactItems=items, ClientRequestToken=token)
        except AwsClientError as error:
            codes = cancellation_codes(error)
            if len(codes) > 1 and codes[1] == "ConditionalCheckFailed":
                # The idempotency claim is no longer ours (its lease passed and another
                # call took it over): that call's outcome stands.
                raise Aborted(
                    "a call with this request_id is in progress",
                    reason="REQUEST_IN_PROGRESS",
                    retry_after=0.2,
                ) from None
            raise

    async def page(
        self, limit: int, start_key: dict[str, Any] | None
    ) -> tuple[list[pb.Account], dict[str, Any] | None]:
        params: dict[str, Any] = {"TableName": self.name, "Limit": limit}
        if start_key:
            params["ExclusiveStartKey"] = start_key
        answer = await self.dynamodb.scan(**params)
        accounts = [account_of(item)[0] for item in answer.get("Items", [])]
        return accounts, answer.get("LastEvaluatedKey")
