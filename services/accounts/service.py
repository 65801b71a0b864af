"""Accounts: balances in minor units, changed only by idempotent writes.

State is in memory for now (one process, one event loop: each method's read
and write happen with no await between them, so no update is lost). The
ledger-on-DynamoDB issue replaces this store with conditional writes.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from interceptors.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
)
from ledger.v1 import accounts_pb2 as pb
from ledger.v1 import money_pb2
from ledger.v1.accounts_platform import AccountsServicer
from services.idempotency import ReplayLog, RequestIdReused

DEFAULT_PAGE_SIZE = 50
Context = grpc.aio.ServicerContext[Any, Any]


def _timestamp(now: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(now)
    return stamp


class AccountsService(AccountsServicer):
    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._accounts: dict[str, pb.Account] = {}
        self._order: list[str] = []
        self._replays = ReplayLog()

    def _replayed(self, method: str, request_id: str, request: Message) -> Message | None:
        try:
            return self._replays.recorded(method, request_id, request)
        except RequestIdReused:
            raise InvalidArgument(
                "request_id was already used with a different request",
                [FieldViolation("request_id", "already used with a different request body")],
                reason="IDEMPOTENCY_KEY_REUSED",
            ) from None

    def _account(self, account_id: str) -> pb.Account:
        account = self._accounts.get(account_id)
        if account is None:
            raise NotFound(
                "account not found",
                resource_type="ledger.v1.Account",
                resource_name=f"accounts/{account_id}",
                reason="ACCOUNT_NOT_FOUND",
            )
        return account

    def _open(self, account_id: str) -> pb.Account:
        account = self._account(account_id)
        if account.state != pb.ACCOUNT_STATE_OPEN:
            raise FailedPrecondition(
                "the account is closed",
                [PreconditionViolation("ACCOUNT_CLOSED", f"accounts/{account_id}", "closed")],
                reason="ACCOUNT_CLOSED",
            )
        return account

    @staticmethod
    def _check_currency(account: pb.Account, amount: money_pb2.Money) -> None:
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

    async def open_account(
        self, request: pb.OpenAccountRequest, context: Context
    ) -> pb.OpenAccountResponse:
        replay = self._replayed("OpenAccount", request.request_id, request)
        if isinstance(replay, pb.OpenAccountResponse):
            return replay
        now = _timestamp(self._clock())
        account = pb.Account(
            account_id=str(uuid.uuid4()),
            owner=request.owner,
            currency_code=request.currency_code,
            balance_minor_units=0,
            state=pb.ACCOUNT_STATE_OPEN,
            create_time=now,
            update_time=now,
        )
        self._accounts[account.account_id] = account
        self._order.append(account.account_id)
        response = pb.OpenAccountResponse(account=account)
        return self._replays.record("OpenAccount", request.request_id, request, response)

    async def get_account(
        self, request: pb.GetAccountRequest, context: Context
    ) -> pb.GetAccountResponse:
        return pb.GetAccountResponse(account=self._account(request.account_id))

    async def list_accounts(
        self, request: pb.ListAccountsRequest, context: Context
    ) -> pb.ListAccountsResponse:
        start = 0
        if request.page_token:
            try:
                start = int(base64.urlsafe_b64decode(request.page_token.encode()).decode())
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise InvalidArgument(
                    "invalid page_token",
                    [FieldViolation("page_token", "not a token from a previous page")],
                ) from None
        size = request.page_size or DEFAULT_PAGE_SIZE
        ids = self._order[start : start + size]
        response = pb.ListAccountsResponse(accounts=[self._accounts[i] for i in ids])
        if start + size < len(self._order):
            token = base64.urlsafe_b64encode(str(start + size).encode()).decode()
            response.next_page_token = token
        return response

    async def deposit(self, request: pb.DepositRequest, context: Context) -> pb.DepositResponse:
        replay = self._replayed("Deposit", request.request_id, request)
        if isinstance(replay, pb.DepositResponse):
            return replay
        account = self._open(request.account_id)
        self._check_currency(account, request.amount)
        account.balance_minor_units += request.amount.minor_units
        account.update_time.CopyFrom(_timestamp(self._clock()))
        response = pb.DepositResponse(account=account)
        return self._replays.record("Deposit", request.request_id, request, response)

    async def withdraw(self, request: pb.WithdrawRequest, context: Context) -> pb.WithdrawResponse:
        replay = self._replayed("Withdraw", request.request_id, request)
        if isinstance(replay, pb.WithdrawResponse):
            return replay
        account = self._open(request.account_id)
        self._check_currency(account, request.amount)
        if account.balance_minor_units < request.amount.minor_units:
            balance, amount = account.balance_minor_units, request.amount.minor_units
            raise FailedPrecondition(
                f"insufficient funds: the balance is {balance}, the withdrawal {amount}",
                [
                    PreconditionViolation(
                        "INSUFFICIENT_FUNDS",
                        f"accounts/{account.account_id}",
                        f"balance {balance} is less than amount {amount}",
                    )
                ],
                reason="INSUFFICIENT_FUNDS",
                metadata={
                    "balanceMinorUnits": str(balance),
                    "amountMinorUnits": str(amount),
                    "currencyCode": account.currency_code,
                },
            )
        account.balance_minor_units -= request.amount.minor_units
        account.update_time.CopyFrom(_timestamp(self._clock()))
        response = pb.WithdrawResponse(account=account)
        return self._replays.record("Withdraw", request.request_id, request, response)

    async def close_account(
        self, request: pb.CloseAccountRequest, context: Context
    ) -> pb.CloseAccountResponse:
        replay = self._replayed("CloseAccount", request.request_id, request)
        if isinstance(replay, pb.CloseAccountResponse):
            return replay
        account = self._open(request.account_id)
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
        account.state = pb.ACCOUNT_STATE_CLOSED
        account.update_time.CopyFrom(_timestamp(self._clock()))
        response = pb.CloseAccountResponse(account=account)
        return self._replays.record("CloseAccount", request.request_id, request, response)
