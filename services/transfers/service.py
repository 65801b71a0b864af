"""Transfers: each transfer is a saga (services.transfers.saga) run by the engine.

CreateTransfer is idempotent through the saga itself: the transfer id is
derived from the request_id (UUIDv5), and the engine creates the saga once;
a repeat with the same request joins the same saga (and waits for it to end
like the first call), a repeat with a different body is
IDEMPOTENCY_KEY_REUSED. The answer comes when the saga has ended or when
the call's deadline is near (then PENDING: the saga goes on, and GetTransfer
shows how it ended).
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc

from durable.events import trace_context
from durable.idempotency import digest, key_reused
from durable.page_tokens import PageTokens
from durable.saga import KeyReused, SagaEngine
from interceptors.deadline import remaining_budget
from interceptors.errors import FieldViolation, InvalidArgument, NotFound
from ledger.v1 import transfers_pb2 as pb
from ledger.v1.transfers_platform import TransfersServicer
from services.transfers.activity import ActivityFeed
from services.transfers.saga import KIND, payload_of, transfer_of

Context = grpc.aio.ServicerContext[Any, Any]
TRANSFER_IDS = uuid.UUID("5e0b6c8e-7d0a-4c57-9a51-2f3c1d8e9b10")
DEFAULT_PAGE_SIZE = 50
# Kept back from the call's deadline to read and send the answer.
ANSWER_MARGIN_SECONDS = 0.3


class TransfersService(TransfersServicer):
    def __init__(
        self,
        engine: SagaEngine,
        feed: ActivityFeed,
        page_tokens: PageTokens,
        saga_deadline_seconds: float = 30.0,
    ) -> None:
        self._engine = engine
        self._feed = feed
        self._tokens = page_tokens
        self._saga_deadline = saga_deadline_seconds

    async def create_transfer(
        self, request: pb.CreateTransferRequest, context: Context
    ) -> pb.CreateTransferResponse:
        transfer_id = str(uuid.uuid5(TRANSFER_IDS, request.request_id))
        try:
            saga, created = await self._engine.start(
                transfer_id,
                KIND,
                digest(request),
                payload_of(request),
                self._saga_deadline,
                trace_context(),
            )
        except KeyReused:
            raise key_reused() from None
        budget = remaining_budget()
        wait = (self._saga_deadline if budget is None else budget) - ANSWER_MARGIN_SECONDS
        saga = await self._engine.run(transfer_id, wait, leased=saga if created else None)
        return pb.CreateTransferResponse(transfer=transfer_of(saga))

    async def get_transfer(
        self, request: pb.GetTransferRequest, context: Context
    ) -> pb.GetTransferResponse:
        saga = await self._engine.get(request.transfer_id)
        if saga is None or saga.kind != KIND:
            raise NotFound(
                "transfer not found",
                resource_type="ledger.v1.Transfer",
                resource_name=f"transfers/{request.transfer_id}",
                reason="TRANSFER_NOT_FOUND",
            )
        return pb.GetTransferResponse(transfer=transfer_of(saga))

    async def list_account_activity(
        self, request: pb.ListAccountActivityRequest, context: Context
    ) -> pb.ListAccountActivityResponse:
        start = self._tokens.decode(request.page_token) if request.page_token else None
        if start is not None and start.get("account_id", {}).get("S") != request.account_id:
            raise InvalidArgument(
                "invalid page_token",
                [FieldViolation("page_token", "belongs to another account's listing")],
            )
        entries, last_key = await self._feed.page(
            request.account_id, request.page_size or DEFAULT_PAGE_SIZE, start
        )
        response = pb.ListAccountActivityResponse(entries=entries)
        if last_key:
            response.next_page_token = self._tokens.encode(last_key)
        return response
