"""The per-account activity feed, kept by the consumer of the transfer events.

Table `<LEDGER_NAME>-activity`: hash `account_id`, range `sort_key` =
`<time_us, 20 digits>#<event_id>`, so a Query reads an account's entries
newest first. A finished transfer's event adds one entry for the source and,
when it completed, one for the destination. Each put is conditioned on the
entry not existing, and the key comes from the event alone, so a redelivered
event changes nothing: processing is idempotent by event id.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError as AwsClientError

from durable.consumer import Delivery
from durable.dynamo import error_code, from_item, to_item, to_value
from ledger.v1 import money_pb2, transfers_pb2
from services.transfers.saga import STATE_OF


class ActivityFeed:
    def __init__(self, dynamodb: Any, table: str) -> None:
        self.dynamodb = dynamodb
        self.table = table

    async def record(self, delivery: Delivery) -> None:
        event = delivery.body
        sort_key = f"{int(event['time_us']):020d}#{event['event_id']}"
        sides = [("DEBIT", event["source"], event["destination"])]
        if event["state"] == "COMPLETED":
            sides.append(("CREDIT", event["destination"], event["source"]))
        for direction, account_id, counterparty in sides:
            entry = {
                "account_id": account_id,
                "sort_key": sort_key,
                "event_id": event["event_id"],
                "transfer_id": event["transfer_id"],
                "state": event["state"],
                "direction": direction,
                "currency": event["currency"],
                "minor_units": event["minor_units"],
                "counterparty": counterparty,
                "failure_reason": event["failure_reason"],
                "time_us": event["time_us"],
            }
            try:
                await self.dynamodb.put_item(
                    TableName=self.table,
                    Item=to_item(entry),
                    ConditionExpression="attribute_not_exists(sort_key)",
                )
            except AwsClientError as error:
                if error_code(error) != "ConditionalCheckFailedException":
                    raise  # already recorded (a redelivery) is fine; anything else is not

    async def page(
        self, account_id: str, limit: int, start_key: dict[str, Any] | None
    ) -> tuple[list[transfers_pb2.ActivityEntry], dict[str, Any] | None]:
        params: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "account_id = :account",
            "ExpressionAttributeValues": {":account": to_value(account_id)},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if start_key:
            params["ExclusiveStartKey"] = start_key
        answer = await self.dynamodb.query(**params)
        entries = []
        for item in answer.get("Items", []):
            values = from_item(item)
            entry = transfers_pb2.ActivityEntry(
                event_id=values["event_id"],
                transfer_id=values["transfer_id"],
                state=STATE_OF[values["state"]],
                direction=values["direction"],
                amount=money_pb2.Money(
                    currency_code=values["currency"], minor_units=values["minor_units"]
                ),
                counterparty_account_id=values["counterparty"],
                failure_reason=values["failure_reason"],
            )
            entry.time.FromMicroseconds(values["time_us"])
            entries.append(entry)
        return entries, answer.get("LastEvaluatedKey")
