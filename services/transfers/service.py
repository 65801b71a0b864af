"""Transfers: debit the source, credit the destination, refund on failure.

Every step is a call to the Accounts service through its generated client,
with a request_id derived from the transfer id and the step, so a repeated
step can never move money twice. State is in memory for now: the saga that
survives a crash (persisted after every step, resumed by a recovery loop)
belongs to the ledger-on-DynamoDB issue.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from clients.errors import error_info
from interceptors.errors import FieldViolation, InvalidArgument, NotFound
from ledger.v1 import accounts_pb2, transfers_pb2
from ledger.v1.accounts_platform import AccountsClient
from ledger.v1.transfers_platform import TransfersServicer
from services.idempotency import ReplayLog, RequestIdReused

Context = grpc.aio.ServicerContext[Any, Any]


def step_request_id(transfer_id: str, step: str) -> str:
    """A stable request_id (a UUID, 36 characters) for one step of one transfer."""
    return str(uuid.uuid5(uuid.UUID(transfer_id), step))


class TransfersService(TransfersServicer):
    def __init__(
        self,
        accounts: AccountsClient,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._accounts = accounts
        self._clock = clock
        self._transfers: dict[str, transfers_pb2.Transfer] = {}
        self._replays = ReplayLog()

    def _now(self) -> Timestamp:
        stamp = Timestamp()
        stamp.FromDatetime(self._clock())
        return stamp

    def _log_step(
        self, transfer: transfers_pb2.Transfer, name: str, outcome: str, detail: str = ""
    ) -> None:
        now = self._now()
        transfer.history.add(name=name, outcome=outcome, detail=detail, time=now)
        transfer.update_time.CopyFrom(now)

    async def create_transfer(
        self, request: transfers_pb2.CreateTransferRequest, context: Context
    ) -> transfers_pb2.CreateTransferResponse:
        try:
            replay = self._replays.recorded("CreateTransfer", request.request_id, request)
        except RequestIdReused:
            raise InvalidArgument(
                "request_id was already used with a different request",
                [FieldViolation("request_id", "already used with a different request body")],
                reason="IDEMPOTENCY_KEY_REUSED",
            ) from None
        if isinstance(replay, transfers_pb2.CreateTransferResponse):
            return replay
        transfer = transfers_pb2.Transfer(
            transfer_id=str(uuid.uuid4()),
            source_account_id=request.source_account_id,
            destination_account_id=request.destination_account_id,
            amount=request.amount,
            state=transfers_pb2.TRANSFER_STATE_PENDING,
            create_time=self._now(),
        )
        self._transfers[transfer.transfer_id] = transfer
        await self._run(transfer)
        response = transfers_pb2.CreateTransferResponse(transfer=transfer)
        return self._replays.record("CreateTransfer", request.request_id, request, response)

    async def _run(self, transfer: transfers_pb2.Transfer) -> None:
        memo = f"transfer {transfer.transfer_id}"
        try:
            await self._accounts.withdraw(
                accounts_pb2.WithdrawRequest(
                    request_id=step_request_id(transfer.transfer_id, "DEBIT_SOURCE"),
                    account_id=transfer.source_account_id,
                    amount=transfer.amount,
                    memo=memo,
                )
            )
        except grpc.aio.AioRpcError as error:
            self._log_step(transfer, "DEBIT_SOURCE", "FAILED", _reason(error))
            self._fail(transfer, error)
            return
        self._log_step(transfer, "DEBIT_SOURCE", "DONE")
        try:
            await self._accounts.deposit(
                accounts_pb2.DepositRequest(
                    request_id=step_request_id(transfer.transfer_id, "CREDIT_DESTINATION"),
                    account_id=transfer.destination_account_id,
                    amount=transfer.amount,
                    memo=memo,
                )
            )
        except grpc.aio.AioRpcError as error:
            self._log_step(transfer, "CREDIT_DESTINATION", "FAILED", _reason(error))
            # Stays PENDING until the refund is done: FAILED means nothing moved.
            await self._accounts.deposit(
                accounts_pb2.DepositRequest(
                    request_id=step_request_id(transfer.transfer_id, "REFUND_SOURCE"),
                    account_id=transfer.source_account_id,
                    amount=transfer.amount,
                    memo=f"refund of {memo}",
                )
            )
            self._log_step(transfer, "REFUND_SOURCE", "DONE")
            self._fail(transfer, error)
            return
        self._log_step(transfer, "CREDIT_DESTINATION", "DONE")
        transfer.state = transfers_pb2.TRANSFER_STATE_COMPLETED

    @staticmethod
    def _fail(transfer: transfers_pb2.Transfer, error: grpc.aio.AioRpcError) -> None:
        transfer.state = transfers_pb2.TRANSFER_STATE_FAILED
        transfer.failure_reason = _reason(error)

    async def get_transfer(
        self, request: transfers_pb2.GetTransferRequest, context: Context
    ) -> transfers_pb2.GetTransferResponse:
        transfer = self._transfers.get(request.transfer_id)
        if transfer is None:
            raise NotFound(
                "transfer not found",
                resource_type="ledger.v1.Transfer",
                resource_name=f"transfers/{request.transfer_id}",
                reason="TRANSFER_NOT_FOUND",
            )
        return transfers_pb2.GetTransferResponse(transfer=transfer)


def _reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed step (e.g. INSUFFICIENT_FUNDS), else its code."""
    info = error_info(error)
    return info.reason if info is not None else error.code().name
