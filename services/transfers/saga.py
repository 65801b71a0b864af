"""The transfer as a saga: debit the source, then credit the destination.

- DEBIT_SOURCE: Withdraw from the source; compensated by REFUND_SOURCE (a
  Deposit back). Both carry request_ids derived from the transfer id and the
  step, so a repeated step (retry, recovery after a crash) never moves money
  twice.
- CREDIT_DESTINATION: Deposit to the destination; the pivot: it has no
  compensation, so once the debit is done a transient failure is retried
  until the credit is made or fails permanently (closed account, currency),
  which refunds the source.
- The debit places a hold named by the transfer id on the source, and the
  credit or the refund releases it in its own write (services.accounts): the
  source cannot be closed while the transfer may still refund it. Only
  transfers started with holds (`hold_source` in the payload) use them: a
  step repeated after an upgrade must send what it sent the first time, or
  Accounts refuses it as a reused request_id.

Errors whose code says a retry cannot help (FAILED_PRECONDITION, NOT_FOUND,
INVALID_ARGUMENT, ...) are permanent, with the ErrorInfo reason as the
saga's failure reason; the rest (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED,
...) are retried by the engine. One INVALID_ARGUMENT is not:
IDEMPOTENCY_KEY_REUSED says the step was sent before with other content (by
another version of this code), so whether it took effect is unknown, and
neither going on nor compensating is safe. It is retried, and the saga
stays unfinished for a person to look at (the engine's oldest-running gauge
and its "saga step still failing" log lines show it), rather than refund a
credit that was made.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import grpc

from clients.errors import error_info
from durable.idempotency import KEY_REUSED
from durable.saga import COMPLETED, Saga, Step
from ledger.v1 import accounts_pb2, money_pb2, transfers_pb2
from ledger.v1.accounts_platform import AccountsClient

KIND = "ledger.v1.Transfer"
PERMANENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
EVENT_FIELDS = ("source", "destination", "currency", "minor_units")  # of the payload
STATE_OF = {
    "RUNNING": transfers_pb2.TRANSFER_STATE_PENDING,
    "COMPENSATING": transfers_pb2.TRANSFER_STATE_PENDING,
    "COMPLETED": transfers_pb2.TRANSFER_STATE_COMPLETED,
    "FAILED": transfers_pb2.TRANSFER_STATE_FAILED,
}


def step_request_id(transfer_id: str, step: str) -> str:
    """A stable request_id (a UUID, 36 characters) for one step of one transfer."""
    return str(uuid.uuid5(uuid.UUID(transfer_id), step))


def payload_of(request: transfers_pb2.CreateTransferRequest) -> dict[str, Any]:
    return {
        "source": request.source_account_id,
        "destination": request.destination_account_id,
        "currency": request.amount.currency_code,
        "minor_units": request.amount.minor_units,
        "hold_source": True,
    }


def amount_of(saga: Saga) -> money_pb2.Money:
    return money_pb2.Money(
        currency_code=saga.payload["currency"], minor_units=saga.payload["minor_units"]
    )


def transfer_of(saga: Saga) -> transfers_pb2.Transfer:
    transfer = transfers_pb2.Transfer(
        transfer_id=saga.saga_id,
        source_account_id=saga.payload["source"],
        destination_account_id=saga.payload["destination"],
        amount=amount_of(saga),
        state=STATE_OF[saga.status],
        failure_reason=saga.failure_reason if saga.finished else "",
    )
    for entry in saga.history:
        step = transfer.history.add(
            name=entry["name"], outcome=entry["outcome"], detail=entry["detail"]
        )
        step.time.FromMicroseconds(entry["time_us"])
    transfer.create_time.FromMicroseconds(saga.created_us)
    transfer.update_time.FromMicroseconds(saga.updated_us)
    return transfer


class TransferSaga:
    kind = KIND

    def __init__(self, accounts: AccountsClient) -> None:
        self._accounts = accounts
        self.steps: Sequence[Step] = (
            Step("DEBIT_SOURCE", self._debit, self._refund, "REFUND_SOURCE"),
            Step("CREDIT_DESTINATION", self._credit),
        )

    @staticmethod
    def _movement(saga: Saga, step: str, account: str) -> dict[str, Any]:
        """The fields of the Withdraw or Deposit that makes `step` of this transfer."""
        memo = (
            f"transfer {saga.saga_id}" if step != "REFUND_SOURCE" else f"refund of {saga.saga_id}"
        )
        return {
            "request_id": step_request_id(saga.saga_id, step),
            "account_id": saga.payload[account],
            "amount": amount_of(saga),
            "memo": memo,
        }

    @staticmethod
    def source_hold(saga: Saga) -> accounts_pb2.Hold | None:
        if not saga.payload.get("hold_source"):
            return None
        return accounts_pb2.Hold(account_id=saga.payload["source"], hold_id=saga.saga_id)

    async def _debit(self, saga: Saga) -> None:
        movement = self._movement(saga, "DEBIT_SOURCE", "source")
        hold = self.source_hold(saga)
        await self._accounts.withdraw(
            accounts_pb2.WithdrawRequest(**movement, hold_id=hold.hold_id if hold else "")
        )

    async def _credit(self, saga: Saga) -> None:
        movement = self._movement(saga, "CREDIT_DESTINATION", "destination")
        await self._accounts.deposit(
            accounts_pb2.DepositRequest(**movement, release_hold=self.source_hold(saga))
        )

    async def _refund(self, saga: Saga) -> None:
        movement = self._movement(saga, "REFUND_SOURCE", "source")
        await self._accounts.deposit(
            accounts_pb2.DepositRequest(**movement, release_hold=self.source_hold(saga))
        )

    def permanent(self, error: BaseException) -> str | None:
        if isinstance(error, grpc.aio.AioRpcError) and error.code() in PERMANENT_CODES:
            info = error_info(error)
            if info is None:
                return error.code().name
            return None if info.reason == KEY_REUSED else info.reason  # see the docstring
        return None

    def unknowable(self, error: BaseException) -> bool:
        """A step refused as IDEMPOTENCY_KEY_REUSED: its request_id took another request."""
        if not isinstance(error, grpc.aio.AioRpcError):
            return False
        info = error_info(error)
        return info is not None and info.reason == KEY_REUSED

    def event(self, saga: Saga) -> dict[str, Any]:
        completed = saga.status == COMPLETED
        return {
            "event_id": saga.saga_id,
            "type": "ledger.v1.TransferCompleted" if completed else "ledger.v1.TransferFailed",
            "transfer_id": saga.saga_id,
            "state": saga.status,
            "failure_reason": "" if completed else saga.failure_reason,
            "time_us": saga.updated_us,
            **{key: saga.payload[key] for key in EVENT_FIELDS},
        }
