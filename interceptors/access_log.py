"""One JSON log line per call, with the fields of PLATFORM.md.

`grpc_service`, `grpc_method`, `grpc_code`, `duration_ms`, `correlation_id`,
`trace_id`, `span_id`, `peer`, and for failures `error_code` (the ErrorInfo
reason) and `error_message`; `stack_trace` only for server errors (the
traceback never goes on the wire, only here); `request_details` (sanitised
by interceptors.redaction) for failed and slow calls, and for every call at
DEBUG. `user_id` comes from `user_id_var`, which a service's authentication
of end users sets when it knows. Beside PLATFORM.md's fields: `caller`, the
calling workload's identity proven by mTLS (interceptors.authorization),
when known, and `slow`.

Levels: OK at INFO, slow OK at WARNING, client errors at WARNING, server
errors at ERROR. `LOG_CALLS=errors` keeps failures and slow calls, except
the calls the server's load protection turned away (`errors.LoadRejected`:
rate limit, shedding; counted in metrics, and the queue-delay gate logs when
shedding starts and stops); `none` silences the access log, slow calls
too. A JSON line per call costs about as much as a small handler.

Slow calls (go-zero's `slowcall` line, anchor): a unary call that took
`LOG_SLOW_CALLS_SECONDS` or longer is marked `slow: true`, and logged even
when it succeeded, at WARNING, with its sanitised request: the calls that
make p99 are the ones to look at, and `errors` mode would keep none of them.
The default is PLATFORM.md's slow call, 1 s. One threshold for every method,
as go-zero's: the client breaker also calls a call slow only past half its
method's deadline, but a log line is cheap and a saga step of 1.2 s is worth
seeing; a service whose calls are slow by design raises the setting. Streams
are never slow: they last as long as their callers use them. The chain
compares each call's duration with `logged_after(policy)`, so a fast call
costs one comparison, as before.
"""

from __future__ import annotations

import contextvars
import enum
import logging
import math
import traceback
from typing import Any

import grpc

from interceptors.call import ServerCall
from interceptors.codes import SERVER_ERRORS
from interceptors.errors import LoadRejected, PlatformError
from interceptors.policy import Arity, MethodPolicy
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
    only when they took `logged_after(policy)` or longer (the chain skips the call
    otherwise). `slow_after`: seconds, 0 for no slow-call lines."""

    def __init__(self, mode: CallLogging, redactor: Redactor, slow_after: float = 0.0) -> None:
        self.mode = mode
        self.redactor = redactor
        self.slow_after = slow_after

    def logged_after(self, policy: MethodPolicy) -> float:
        """How long a successful call of the method must take to get a line."""
        if self.mode is CallLogging.ALL:
            return 0.0
        if self.mode is CallLogging.ERRORS and self._watches(policy):
            return self.slow_after
        return math.inf

    def _watches(self, policy: MethodPolicy) -> bool:
        return self.slow_after > 0 and policy.arity is Arity.UNARY_UNARY

    def write(self, call: ServerCall) -> None:
        code = call.code
        slow = call.duration >= self.slow_after and self._watches(call.policy)
        if code is grpc.StatusCode.OK:
            if slow and self.mode is not CallLogging.NONE:
                level = logging.WARNING
            elif self.mode is CallLogging.ALL:
                level = logging.INFO
            else:
                return
        elif self.mode is CallLogging.NONE or (
            self.mode is CallLogging.ERRORS and isinstance(call.error, LoadRejected)
        ):
            return
        else:
            level = logging.ERROR if code in SERVER_ERRORS else logging.WARNING
        if not _log.isEnabledFor(level):
            return  # before formatting the request, which the caller chose
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
        if slow:
            fields["slow"] = True
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
        if request is not None and (error is not None or slow or _log.isEnabledFor(logging.DEBUG)):
            fields["request_details"] = (
                f"<{request.size} bytes, not a valid message>"
                if isinstance(request, Undecodable)
                else self.redactor.sanitise(request)
            )
        _log.log(level, "grpc call", extra=fields)
