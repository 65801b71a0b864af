"""One JSON log line per call, with the fields of PLATFORM.md.

`grpc_service`, `grpc_method`, `grpc_code`, `duration_ms`, `correlation_id`,
`trace_id`, `span_id`, `peer`, and for failures `error_code` (the ErrorInfo
reason) and `error_message`; `stack_trace` only for server errors (the
traceback never goes on the wire, only here); `request_details` (sanitised
by interceptors.redaction) for failed calls, and for every call at DEBUG.
`user_id` comes from `user_id_var`, which a service's authentication of end
users sets when it knows; `caller`, beside PLATFORM.md's fields, is the calling
workload's identity proven by mTLS (interceptors.authorization), when known.

Levels: OK at INFO, client errors at WARNING, server errors at ERROR.
`LOG_CALLS=errors` keeps only failures, except the calls the server's load
protection turned away (`errors.LoadRejected`: rate limit, shedding; counted
in metrics, and the queue-delay gate logs when shedding starts and stops);
`none` silences the access log. A JSON line per call costs about as much as
a small handler.
"""

from __future__ import annotations

import contextvars
import enum
import logging
import traceback
from typing import Any

import grpc

from interceptors.call import ServerCall
from interceptors.codes import SERVER_ERRORS
from interceptors.errors import LoadRejected, PlatformError
from interceptors.redaction import Redactor
from interceptors.validation import Undecodable

user_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("user_id", default=None)
_log = logging.getLogger("grpc.access")


class CallLogging(enum.Enum):
    ALL = "ALL"
    ERRORS = "ERRORS"
    NONE = "NONE"


class AccessLog:
    """Written by the chain when a call ends: always for failures, for successes
    only when `logs_successes` (the chain skips the call otherwise)."""

    def __init__(self, mode: CallLogging, redactor: Redactor) -> None:
        self.mode = mode
        self.redactor = redactor

    @property
    def logs_successes(self) -> bool:
        return self.mode is CallLogging.ALL

    def write(self, call: ServerCall) -> None:
        code = call.code
        if code is grpc.StatusCode.OK:
            if not self.logs_successes or not _log.isEnabledFor(logging.INFO):
                return
            level = logging.INFO
        elif self.mode is CallLogging.NONE or (
            self.mode is CallLogging.ERRORS and isinstance(call.error, LoadRejected)
        ):
            return
        else:
            level = logging.ERROR if code in SERVER_ERRORS else logging.WARNING
        fields: dict[str, Any] = {
            "grpc_service": call.policy.service,
            "grpc_method": call.policy.method,
            "grpc_code": code.name,
            "duration_ms": round(call.duration * 1000, 3),
            "correlation_id": call.correlation_id,
            "trace_id": call.trace_id,
            "span_id": call.span_id,
            "peer": call.context.peer(),
        }
        if call.caller:
            fields["caller"] = call.caller
        user_id = user_id_var.get()
        if user_id:
            fields["user_id"] = user_id
        error = call.error
        if error is not None:
            if isinstance(error, PlatformError):
                fields["error_code"] = error.reason
                fields["error_message"] = error.message
            else:
                fields["error_code"] = "INTERNAL"
                fields["error_message"] = f"{type(error).__name__}: {error}"
                fields["stack_trace"] = "".join(traceback.format_exception(error))
        request = call.request
        if request is not None and (error is not None or _log.isEnabledFor(logging.DEBUG)):
            fields["request_details"] = (
                f"<{request.size} bytes, not a valid message>"
                if isinstance(request, Undecodable)
                else self.redactor.sanitise(request)
            )
        _log.log(level, "grpc call", extra=fields)
