"""Reading the rich error details (`google.rpc.Status`) of a failed call.

Servers on this platform attach a `google.rpc.Status` to every error
(interceptors.errors). `error_info(error)` gives its ErrorInfo (reason,
domain, metadata), `details_of(error)` every detail unpacked.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from interceptors.errors import STATUS_DETAILS_KEY

_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.QuotaFailure,
    error_details_pb2.RetryInfo,
    error_details_pb2.ResourceInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
    error_details_pb2.RequestInfo,
)


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def details_of(error: grpc.aio.AioRpcError) -> list[Message]:
    status = status_of(error)
    if status is None:
        return []
    details: list[Message] = []
    for packed in status.details:
        for detail_type in _DETAIL_TYPES:
            if packed.Is(detail_type.DESCRIPTOR):
                detail = detail_type()
                packed.Unpack(detail)
                details.append(detail)
                break
    return details


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    for detail in details_of(error):
        if isinstance(detail, error_details_pb2.ErrorInfo):
            return detail
    return None
