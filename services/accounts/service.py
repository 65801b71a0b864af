"""Accounts: balances in minor units in DynamoDB, changed only by idempotent writes.

Each write runs inside `durable.idempotency.Idempotency`: the request_id is
claimed first, and the account's conditional write commits together with the
recorded outcome in one `TransactWriteItems` (services.accounts.table). A
repeat gets the recorded answer, including a recorded business error such as
INSUFFICIENT_FUNDS, so it never has a second effect.

Holds keep an account open while money that left it may have to come back.
A Withdraw with a `hold_id` places one; a Deposit with `release_hold`
releases it, on its own account or another, in the same transaction; an
account with a hold cannot be closed. A transfer's debit places one, and its
credit or its refund releases it, so a refund always lands: without it, the
owner of an account a transfer had emptied could close it before a failed
credit was refunded, and the money would need a person. ReleaseHold releases
one without moving money, for a person (through `services.transfers.settle
release-hold`) when the write that should have released it never will; the
request, with its reason, is logged before the write and its answer after.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from durable.idempotency import Claim, DynamoIdempotencyStore, Idempotency, Outcome
from durable.page_tokens import PageTokens
from interceptors.errors import (
    AlreadyExists,
    FailedPrecondition,
    PreconditionViolation,
    QuotaViolation,
    ResourceExhausted,
)
from ledger.v1 import accounts_pb2 as pb
from ledger.v1 import money_pb2
from ledger.v1.accounts_platform import AccountsServicer
from services.accounts.table import AccountsTable, drop_hold

DEFAULT_PAGE_SIZE = 50
# Holds per account: each is a few dozen bytes of an item DynamoDB caps at 400 KB.
MAX_HOLDS = 1000
SCOPE = "ledger.v1.Accounts"
_log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


def _open(account: pb.Account) -> None:
    if account.state != pb.ACCOUNT_STATE_OPEN:
        raise FailedPrecondition(
            "the account is closed",
            [PreconditionViolation("ACCOUNT_CLOSED", f"accounts/{account.account_id}", "closed")],
            reason="ACCOUNT_CLOSED",
        )


def _same_currency(account: pb.Account, amount: money_pb2.Money) -> None:
    if amount.currency_code != account.currency_code:
        raise FailedPrecondition(
            f"the account holds {account.currency_code}, not {amount.currency_code}",
            [
                PreconditionViolation(
                    "CURRENCY_MISMATCH",
                    f"accounts/{account.account_id}",
                    f"account currency is {account.currency_code}",
                )
            ],
            reason="CURRENCY_MISMATCH",
            metadata={
                "accountCurrency": account.currency_code,
                "requestCurrency": amount.currency_code,
            },
        )


def _covers(account: pb.Account, amount: money_pb2.Money) -> None:
    balance, wanted = account.balance_minor_units, amount.minor_units
    if balance < wanted:
        raise FailedPrecondition(
            f"insufficient funds: the balance is {balance}, the withdrawal {wanted}",
            [
                PreconditionViolation(
                    "INSUFFICIENT_FUNDS",
                    f"accounts/{account.account_id}",
                    f"balance {balance} is less than amount {wanted}",
                )
            ],
            reason="INSUFFICIENT_FUNDS",
            metadata={
                "balanceMinorUnits": str(balance),
                "amountMinorUnits": str(wanted),
                "currencyCode": account.currency_code,
            },
        )


def _empty(account: pb.Account) -> None:
    if account.balance_minor_units != 0:
        raise FailedPrecondition(
            "only an empty account can be closed",
            [
                PreconditionViolation(
                    "BALANCE_NOT_ZERO",
                    f"accounts/{account.account_id}",
                    f"balance is {account.balance_minor_units}",
                )
            ],
            reason="BALANCE_NOT_ZERO",
        )


def _unheld(account: pb.Account) -> None:
    holds = list(account.hold_ids)
    if holds:
        more = f" and {len(holds) - 3} more" if len(holds) > 3 else ""
        raise FailedPrecondition(
            "an account with a hold cannot be closed",
            [
                PreconditionViolation(
                    "HOLDS_PENDING",
                    f"accounts/{account.account_id}",
                    f"held by {', '.join(holds[:3])}{more}",
                )
            ],
            reason="HOLDS_PENDING",
            metadata={"holds": str(len(holds))},
        )


def _hold(account: pb.Account, hold_id: str) -> None:
    if not hold_id:
        return
    if hold_id in account.hold_ids:
        # Another withdrawal placed it (a repeat of that one is answered from its record
        # before this runs): one release must not free two.
        raise AlreadyExists(
            "the account already has a hold with this id",
            reason="HOLD_EXISTS",
            metadata={"holdId": hold_id},
        )
    if len(account.hold_ids) >= MAX_HOLDS:
        # Transient: each hold is released when its transfer ends.
        raise ResourceExhausted(
            "the account has too many holds, try again later",
            [QuotaViolation(f"accounts/{account.account_id}", f"at most {MAX_HOLDS} holds")],
            reason="TOO_MANY_HOLDS",
            retry_after=1.0,
        )
    account.hold_ids.append(hold_id)


class AccountsService(AccountsServicer):
    def __init__(
        self,
        table: AccountsTable,
        records: DynamoIdempotencyStore,
        page_tokens: PageTokens,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._table = table
        self._records = records
        self._idempotency = Idempotency(records)
        self._tokens = page_tokens
        self._clock = clock

    def _now(self) -> Timestamp:
        stamp = Timestamp()
        stamp.FromDatetime(self._clock())
        return stamp

    def _recording(
        self, claim: Claim, respond: Callable[[pb.Account], Message]
    ) -> Callable[[pb.Account], dict[str, Any]]:
        """The idempotency record of the answer for an account as written."""

        def record(account: pb.Account) -> dict[str, Any]:
            answer = respond(account).SerializeToString()
            return self._records.completion(claim, Outcome(response=answer))

        return record

    async def open_account(
        self, request: pb.OpenAccountRequest, context: Context
    ) -> pb.OpenAccountResponse:
        async def effect(claim: Claim) -> pb.OpenAccountResponse:
            now = self._now()
            account = pb.Account(
                account_id=str(uuid.uuid4()),
                owner=request.owner,
                currency_code=request.currency_code,
                balance_minor_units=0,
                state=pb.ACCOUNT_STATE_OPEN,
                create_time=now,
                update_time=now,
            )
            response = pb.OpenAccountResponse(account=account)
            answer = Outcome(response=response.SerializeToString())
            await self._table.create(account, self._records.completion(claim, answer))
            claim.committed = True
            return response

        return await self._idempotency.run(
            f"{SCOPE}/OpenAccount", request.request_id, request, pb.OpenAccountResponse, effect
        )

    async def get_account(
        self, request: pb.GetAccountRequest, context: Context
    ) -> pb.GetAccountResponse:
        account, _ = await self._table.get(request.account_id)
        return pb.GetAccountResponse(account=account)

    async def list_accounts(
        self, request: pb.ListAccountsRequest, context: Context
    ) -> pb.ListAccountsResponse:
        start = self._tokens.decode(request.page_token) if request.page_token else None
        accounts, last_key = await self._table.page(request.page_size or DEFAULT_PAGE_SIZE, start)
        response = pb.ListAccountsResponse(accounts=accounts)
        if last_key:
            response.next_page_token = self._tokens.encode(last_key)
        return response

    async def _change(
        self,
        method: str,
        request: Any,
        account_id: str,
        response_type: type[Any],
        apply: Callable[[pb.Account], None],
        *,
        release: pb.Hold | None = None,
        respond: Callable[[pb.Account], Message] | None = None,
    ) -> Any:
        """Applies `apply` to the account as one idempotent write, releasing `release`
        in it; answers `respond(account)`, by default `response_type(account=account)`
        (`response_type` decodes a recorded answer). Within each attempt `apply` runs
        before `respond` (which the record holds), so `respond` may read what it set."""
        answer = respond or (lambda account: response_type(account=account))

        async def effect(claim: Claim) -> Message:
            def checked(account: pb.Account) -> None:
                apply(account)
                account.update_time.CopyFrom(self._now())

            account = await self._table.change(
                account_id,
                checked,
                self._recording(claim, answer),
                claim.token,
                release,
            )
            claim.committed = True
            return answer(account)

        return await self._idempotency.run(
            f"{SCOPE}/{method}", request.request_id, request, response_type, effect
        )

    async def deposit(self, request: pb.DepositRequest, context: Context) -> pb.DepositResponse:
        def credit(account: pb.Account) -> None:
            _open(account)
            _same_currency(account, request.amount)
            account.balance_minor_units += request.amount.minor_units

        release = request.release_hold if request.HasField("release_hold") else None
        response: pb.DepositResponse = await self._change(
            "Deposit", request, request.account_id, pb.DepositResponse, credit, release=release
        )
        return response

    async def withdraw(self, request: pb.WithdrawRequest, context: Context) -> pb.WithdrawResponse:
        def debit(account: pb.Account) -> None:
            _open(account)
            _same_currency(account, request.amount)
            _covers(account, request.amount)
            account.balance_minor_units -= request.amount.minor_units
            _hold(account, request.hold_id)

        response: pb.WithdrawResponse = await self._change(
            "Withdraw", request, request.account_id, pb.WithdrawResponse, debit
        )
        return response

    async def close_account(
        self, request: pb.CloseAccountRequest, context: Context
    ) -> pb.CloseAccountResponse:
        def close(account: pb.Account) -> None:
            _open(account)
            _empty(account)
            _unheld(account)
            account.state = pb.ACCOUNT_STATE_CLOSED

        response: pb.CloseAccountResponse = await self._change(
            "CloseAccount", request, request.account_id, pb.CloseAccountResponse, close
        )
        return response

    async def release_hold(
        self, request: pb.ReleaseHoldRequest, context: Context
    ) -> pb.ReleaseHoldResponse:
        hold = request.hold
        where = {"account_id": hold.account_id, "hold_id": hold.hold_id}
        # Done by hand, beside the money: the request is logged, with its reason, before
        # the write (a call cancelled after the commit still leaves its line), and the
        # answer after it; WARNING, so that any LOG_LEVEL keeps both.
        _log.warning("hold release requested", extra={**where, "reason": request.reason})
        released: bool | None = None  # stays None when the answer is a recorded one

        def drop(account: pb.Account) -> None:
            nonlocal released  # set again by each attempt after a conflict
            released = drop_hold(account, hold.hold_id)

        response: pb.ReleaseHoldResponse = await self._change(
            "ReleaseHold",
            request,
            hold.account_id,
            pb.ReleaseHoldResponse,
            drop,
            respond=lambda account: pb.ReleaseHoldResponse(
                account=account, released=bool(released)
            ),
        )
        _log.warning(
            "hold release answered",
            extra={**where, "released": response.released, "repeat": released is None},
        )
        return response
