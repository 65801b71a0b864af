"""The error model: platform exceptions and their one mapping to `google.rpc.Status`.

Handlers raise these; the server chain turns them into a status with rich
details (AIP-193), always with exactly one `ErrorInfo` (reason =
`error_code`, domain = the service's error domain, metadata in lowerCamelCase):

| exception | code | extra details |
| --- | --- | --- |
| InvalidArgument | INVALID_ARGUMENT | BadRequest, one FieldViolation per field |
| FailedPrecondition | FAILED_PRECONDITION | PreconditionFailure |
| NotFound | NOT_FOUND | ResourceInfo |
| AlreadyExists, Aborted | ALREADY_EXISTS, ABORTED | RetryInfo when a retry can succeed |
| PermissionDenied, Unauthenticated | PERMISSION_DENIED, UNAUTHENTICATED | |
| ResourceExhausted | RESOURCE_EXHAUSTED | QuotaFailure, RetryInfo |
| Unavailable | UNAVAILABLE | RetryInfo |
| DeadlineExceeded | DEADLINE_EXCEEDED | |
| anything else | INTERNAL | ErrorInfo INTERNAL with the correlation id; nothing else |

`ClientError`s are permanent; `TransientError`s may succeed on retry. The
message of a platform error goes on the wire, so write it for the caller;
an unexpected exception's text never does. Anchor: grpc-interceptor's
`exception_to_status`: one mapping, one hook (`ErrorMapper.translate`) to
override for a service's own exception types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2, symbol_database
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
_CODES = {code.value[0]: code for code in grpc.StatusCode}
REJECTION_CACHE_SIZE = 512  # encoded load rejections kept (encoded_status)
_encoded_rejections: dict[tuple[object, ...], bytes] = {}
Violation = TypeVar("Violation")


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


@dataclass(frozen=True, slots=True)
class PreconditionViolation:
    type: str
    subject: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    subject: str
    description: str


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


class PlatformError(Exception):
    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    error_code: ClassVar[str] = "UNKNOWN"
    transient: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.error_code
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after

    def details(self) -> list[Message]:
        """Details beyond the ErrorInfo, in the order they go on the wire."""
        if self.retry_after is None:
            return []
        return [error_details_pb2.RetryInfo(retry_delay=_duration(self.retry_after))]


class ClientError(PlatformError):
    """The request cannot succeed as sent: do not retry it unchanged."""


class TransientError(PlatformError):
    """The request may succeed later: retry (idempotent methods only) after RetryInfo."""

    transient = True


class _WithViolations(ClientError, Generic[Violation]):
    """A client error that lists what was wrong, one entry per violation."""

    def __init__(
        self,
        message: str,
        violations: Sequence[Violation] = (),
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations)


class InvalidArgument(_WithViolations[FieldViolation]):
    code = grpc.StatusCode.INVALID_ARGUMENT
    error_code = "INVALID_ARGUMENT"

    def details(self) -> list[Message]:
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
        ]


class FailedPrecondition(_WithViolations[PreconditionViolation]):
    code = grpc.StatusCode.FAILED_PRECONDITION
    error_code = "FAILED_PRECONDITION"

    def details(self) -> list[Message]:
        return [
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=v.type, subject=v.subject, description=v.description
                    )
                    for v in self.violations
                ]
            )
        ]


class NotFound(ClientError):
    code = grpc.StatusCode.NOT_FOUND
    error_code = "NOT_FOUND"

    def __init__(
        self,
        message: str,
        *,
        resource_type: str,
        resource_name: str,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.resource_type = resource_type
        self.resource_name = resource_name

    def details(self) -> list[Message]:
        return [
            error_details_pb2.ResourceInfo(
                resource_type=self.resource_type,
                resource_name=self.resource_name,
                description=self.message,
            )
        ]


class AlreadyExists(ClientError):
    code = grpc.StatusCode.ALREADY_EXISTS
    error_code = "ALREADY_EXISTS"


class Aborted(ClientError):
    """A concurrency conflict; with `retry_after` the caller may retry (it is then transient)."""

    code = grpc.StatusCode.ABORTED
    error_code = "ABORTED"

    @property
    def transient(self) -> bool:  # type: ignore[override]
        return self.retry_after is not None


class PermissionDenied(ClientError):
    code = grpc.StatusCode.PERMISSION_DENIED
    error_code = "PERMISSION_DENIED"


class Unauthenticated(ClientError):
    code = grpc.StatusCode.UNAUTHENTICATED
    error_code = "UNAUTHENTICATED"


class DeadlineExceeded(PlatformError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    error_code = "DEADLINE_EXCEEDED"


class Unavailable(TransientError):
    code = grpc.StatusCode.UNAVAILABLE
    error_code = "UNAVAILABLE"


class LoadRejected:
    """Mixin: a call the server's own load protection turned away (rate limit,
    shedding). Counted in metrics; at LOG_CALLS=ERRORS not logged one by one
    (interceptors.access_log): in a flood of them a JSON line costs more than
    the rejection, and the log would become the overload's next victim. For
    the same reason their statuses are encoded once (`encoded_status`)."""


class Shed(Unavailable, LoadRejected):
    """Turned away by the server's load shedding (interceptors.shedding)."""


class ResourceExhausted(TransientError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error_code = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        violations: Sequence[QuotaViolation] = (),
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, retry_after=retry_after)
        self.violations = list(violations)

    def details(self) -> list[Message]:
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=v.subject, description=v.description
                )
                for v in self.violations
            ]
        )
        return [quota, *super().details()]


class Throttled(ResourceExhausted, LoadRejected):
    """Turned away by the server's rate limit (interceptors.ratelimit)."""


class InternalError(PlatformError):
    code = grpc.StatusCode.INTERNAL
    error_code = "INTERNAL"


class Replayed(ClientError):
    """A permanent error recorded earlier (e.g. by an idempotency store), raised again
    exactly as it was first answered: same code, message, reason, metadata and details."""

    def __init__(self, status: status_pb2.Status) -> None:
        info = error_details_pb2.ErrorInfo()
        self._details: list[any_pb2.Any] = []
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                detail.Unpack(info)
            else:
                self._details.append(detail)
        super().__init__(status.message, reason=info.reason, metadata=dict(info.metadata))
        self.code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)  # type: ignore[misc]

    def details(self) -> list[Message]:
        database = symbol_database.Default()
        unpacked: list[Message] = []
        for detail in self._details:
            message = database.GetSymbol(detail.TypeName())()
            detail.Unpack(message)
            unpacked.append(message)
        return unpacked


def to_status(error: PlatformError, domain: str) -> status_pb2.Status:
    """The `google.rpc.Status` of `error`: ErrorInfo first, then the error's own details."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    status.details.add().Pack(info)
    for detail in error.details():
        status.details.add().Pack(detail)
    return status


def encoded_status(error: PlatformError, domain: str) -> bytes:
    """`to_status(error, domain)` serialized, as `grpc-status-details-bin` carries it.

    A load rejection's comes from a cache keyed by everything that goes into
    it. In an overload the same few rejections go out thousands of times a
    second, and building the messages (four or five protobuf objects, packed
    into Any) made a shed call cost 1.29-1.32x a served echo call's event-loop
    CPU; with the cache, 1.09-1.19x (README, the server chain). It is emptied
    when it holds REJECTION_CACHE_SIZE statuses, so callers naming themselves
    in ever new ways cannot grow it.
    """
    if not isinstance(error, LoadRejected):
        encoded: bytes = to_status(error, domain).SerializeToString()
        return encoded
    violations = error.violations if isinstance(error, ResourceExhausted) else ()
    key: tuple[object, ...] = (
        domain,
        type(error),
        error.message,
        error.reason,
        tuple(error.metadata.items()),
        error.retry_after,
        tuple(violations),
    )
    cached = _encoded_rejections.get(key)
    if cached is None:
        if len(_encoded_rejections) >= REJECTION_CACHE_SIZE:
            _encoded_rejections.clear()
        cached = _encoded_rejections[key] = to_status(error, domain).SerializeToString()
    return cached


class ErrorMapper:
    """Turns any exception into a `PlatformError`; override `translate` for your own types."""

    def translate(self, error: BaseException) -> PlatformError | None:
        """Hook: a PlatformError for exception types you know, None for unexpected ones."""
        return None

    def to_platform_error(self, error: BaseException, correlation_id: str) -> PlatformError:
        if isinstance(error, PlatformError):
            return error
        translated = self.translate(error)
        if translated is not None:
            return translated
        return internal_error(correlation_id)


def internal_error(correlation_id: str) -> InternalError:
    """What the caller of a call that failed unexpectedly gets: no detail, the id to report."""
    return InternalError(
        f"internal error (correlation id {correlation_id})",
        metadata={"correlationId": correlation_id},
    )
