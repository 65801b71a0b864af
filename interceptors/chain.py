"""The server chain: wraps each method's handler in the layers, for all four arities.

`ServerChain.wrap(handler, policy)` is called once per method when the
server is assembled (server.runtime), not per call. It asks `steps_for` for
the method's `Steps` (which layers, built in server.chain) and returns a
`ChainedMethod`, which the server's method table binds to each call's
metadata (server.dispatch); per call its handler:

1. creates the `ServerCall`, makes it the current inbound work
   (interceptors.inbound) and runs `MethodChain.enter`: each built-in
   layer's `begin` in the order of `Steps`, validation of the request, then
   the application's layers (the access log only writes, at the end);
2. awaits the handler (within the local deadline, if the deadline layer set
   one), counting messages and validating each inbound stream message, and
   serializes what it answers (grpc is given the bytes), so that a response
   that does not serialize, is not the method's response message, or is over
   `GRPC_MAX_SEND_MESSAGE_BYTES`, fails here, mapped like any other error; a status
   the handler set itself (`context.set_code`) is answered and counted;
3. maps any exception to a rich status in one place (`ErrorMapper`,
   `encoded_status`), keeping the correlation id in the trailers; if mapping
   fails too, the caller gets the generic INTERNAL; a call grpc ended (the
   caller cancelled, or its own deadline passed) is recorded as CANCELLED or
   DEADLINE_EXCEEDED and ends without a status, which could not reach it;
4. runs `MethodChain.leave`: the ends, in reverse order; then aborts with the
   mapped status. A failed call is handled, and counted, once its status is
   handed to grpc, as a successful one is: a stream's status waits in grpc's
   core behind the messages a client has not read yet, and a client that
   stopped reading must not hold the call's place in the layers.

Why fixed call sites rather than a loop over layer objects: under load,
grpc's own code evicts the caches between two calls, so a call's cost is
mostly the memory it touches, not the instructions it runs. A loop calling
`begin` on seven different layer classes is a polymorphic call site that
Python cannot specialize; it cost about 1 us per layer and end, cold, where
a call from its own site costs a quarter of that (measured, see README's
Performance). Application layers keep the loop: they are open-ended.

Handlers are wrapped rather than put behind `grpc.aio.ServerInterceptor`:
an aio interceptor costs an extra coroutine per call and sees neither the
request nor the status (grpc/grpc#26229). A server-streaming handler may be
an async generator or a coroutine using `context.write` (grpc/grpc#28728):
the chain drives both (interceptors.streams).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from interceptors.access_log import AccessLog
from interceptors.call import Layer, Metadata, ServerCall
from interceptors.correlation import HEADER as CORRELATION_HEADER
from interceptors.correlation import CorrelationLayer
from interceptors.errors import (
    STATUS_DETAILS_KEY,
    DeadlineExceeded,
    ErrorMapper,
    encoded_status,
    internal_error,
)
from interceptors.inbound import inbound_var
from interceptors.policy import Arity, MethodPolicy
from interceptors.retry import PUSHBACK_KEY
from interceptors.streams import (
    CallerDeadlinePassed,
    Serializer,
    StreamContext,
    counted_requests,
    write_responses,
)
from interceptors.validation import RequestValidator, lenient, message_class_of

_log = logging.getLogger(__name__)
_OK = grpc.StatusCode.OK
# What a failed call is aborted with: code, message, trailing metadata.
Failure = tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]


def _status_set(call: ServerCall) -> bool:
    """Whether the handler set a failing status itself (context.set_code, grpc's way to
    fail a call without raising): grpc sends it and no message; the call counts under it.
    Call sites first check `context.code()` for None (nothing set, nearly every call),
    so the common path costs that one C call and no Python one."""
    code = call.context.code()
    if code is None or code is _OK:
        return False
    call.code = code
    return True


def _as_is(response: Any) -> bytes:
    """For a method grpc was given no serializer for: its handler answers bytes."""
    encoded: bytes = response
    return encoded


class ResponseTooLarge(Exception):
    """A response over `GRPC_MAX_SEND_MESSAGE_BYTES`: the service's error (INTERNAL). grpc
    would refuse to send it after the chain had counted the call OK, and answer the
    caller RESOURCE_EXHAUSTED, as if retrying later could help."""


class WrongResponseType(Exception):
    """A handler answered something other than its method's response message: the
    service's error (INTERNAL). Every generated message class shares one
    `SerializeToString`, so another message would go out, and the caller would parse
    its bytes as the method's type, silently, wherever the field numbers agree."""


def response_class_of(policy: MethodPolicy) -> type[Message] | None:
    """The method's response class, from its contract in the default descriptor pool
    (where generated code registers it); None for a method not described there."""
    try:
        method = descriptor_pool.Default().FindMethodByName(f"{policy.service}.{policy.method}")
    except KeyError:
        return None
    return message_factory.GetMessageClass(method.output_type)


def _encoder(serialize: Serializer, response_class: type[Message] | None, limit: int) -> Serializer:
    def encode(response: Any) -> bytes:
        if response_class is not None and type(response) is not response_class:
            raise WrongResponseType(
                f"the handler answered {type(response).__name__}, not {response_class.__name__}"
            )
        encoded = serialize(response)
        if len(encoded) > limit:
            raise ResponseTooLarge(
                f"a response of {len(encoded)} bytes is over GRPC_MAX_SEND_MESSAGE_BYTES ({limit})"
            )
        return encoded

    return encode


@dataclass(frozen=True, slots=True)
class Steps:
    """The layers of one method, in the order their `begin` runs (None: off).

    The first three never reject a call, so their ends run (correlation has
    none; tracing's runs when its begin attached a context); the others raise
    a PlatformError from `begin` to reject it, and their `end` must tolerate a
    `begin` that did not complete (authorization has no end).
    """

    metrics: Layer
    correlation: CorrelationLayer  # begin only
    tracing: Layer
    access_log: AccessLog
    authorization: Layer | None  # begin only
    deadline: Layer
    rate_limit: Layer | None
    shedding: Layer | None
    application: Sequence[Layer]  # after validation: they see only valid requests


StepsFactory = Callable[[MethodPolicy], Steps]


class MethodChain:
    """One method's steps, run per call by the arity wrappers of `ServerChain`."""

    __slots__ = (
        "access_log",
        "application",
        "authorization",
        "check",
        "correlation",
        "deadline",
        "log_successes_after",
        "metrics",
        "rate_limit",
        "shedding",
        "tracing",
        "valid",
    )

    def __init__(
        self,
        policy: MethodPolicy,
        steps: Steps,
        validator: RequestValidator,
        request_class: type[Message] | None,
    ) -> None:
        self.metrics = steps.metrics
        self.correlation = steps.correlation
        self.tracing = steps.tracing
        self.access_log = steps.access_log
        self.log_successes_after = steps.access_log.logged_after(policy)
        self.authorization = steps.authorization
        self.deadline = steps.deadline
        self.rate_limit = steps.rate_limit
        self.shedding = steps.shedding
        self.application = tuple(steps.application)
        self.check = validator.check
        # The compiled rules of the request type (interceptors.compiled_rules), or None.
        self.valid = validator.fast_path(request_class) if request_class is not None else None

    def validate(self, message: Any) -> None:
        valid = self.valid
        if valid is None or not valid(message):
            self.check(message)  # protovalidate: raises InvalidArgument with every violation

    def enter(self, call: ServerCall) -> None:
        inbound_var.set(call)  # not reset: the call's task, and its context, end with it
        self.metrics.begin(call)
        self.correlation.begin(call)
        self.tracing.begin(call)
        if self.authorization is not None:
            self.authorization.begin(call)
        self.deadline.begin(call)
        if self.rate_limit is not None:
            self.rate_limit.begin(call)
        if self.shedding is not None:
            self.shedding.begin(call)
        request = call.request
        if request is not None:
            valid = self.valid  # validate()'s body, inlined: this runs for every call
            if valid is None or not valid(request):
                self.check(request)
        for layer in self.application:
            layer.begin(call)
            call.begun += 1

    def leave(self, call: ServerCall) -> None:
        """Ends, in reverse, exactly the application layers whose `begin` completed,
        then the built-in layers (each knows from the call what its begin did)."""
        call.duration = time.perf_counter() - call.started
        if call.begun:
            application = self.application
            for index in range(call.begun - 1, -1, -1):
                try:
                    application[index].end(call)
                except Exception:
                    _log.exception("application layer failed at end of call")
        try:
            if self.shedding is not None:
                self.shedding.end(call)
            if self.rate_limit is not None:
                self.rate_limit.end(call)
            self.deadline.end(call)
        except Exception:
            _log.exception("chain layer failed at end of call")
        if call.code is not _OK or call.duration >= self.log_successes_after:
            try:  # formats the caller's request: must not keep the ends below from running
                self.access_log.write(call)
            except Exception:
                _log.exception("access log failed at end of call")
        try:
            if call.span_token is not None:
                self.tracing.end(call)
            self.metrics.end(call)
        except Exception:
            _log.exception("chain layer failed at end of call")


class ChainedMethod:
    """One method behind the chain, as `server.dispatch.MethodTable` serves it.

    grpc decodes a call's metadata to find its handler and gives it to the
    table (`HandlerCallDetails.invocation_metadata`); `for_call` binds it to
    the chain's behavior, so the chain does not ask grpc to decode it again
    through `context.invocation_metadata()` (Python namedtuples per entry:
    about 17k instructions a call, measured with callgrind). The handler grpc
    gets is the template's namedtuple with the bound behavior in its slot.
    """

    __slots__ = ("_behavior", "_fields", "_handler_type", "_slot")

    def __init__(self, template: Any, slot: str, behavior: Callable[..., Any]) -> None:
        self._handler_type: Any = type(template)
        self._fields = list(template)
        self._slot = self._handler_type._fields.index(slot)
        self._behavior = behavior  # (metadata, request(s), context)

    def for_call(self, metadata: Metadata) -> grpc.RpcMethodHandler[Any, Any]:
        fields = self._fields.copy()
        fields[self._slot] = partial(self._behavior, metadata)
        handler: grpc.RpcMethodHandler[Any, Any] = tuple.__new__(self._handler_type, fields)
        return handler


class ServerChain:
    def __init__(
        self,
        steps_for: StepsFactory,
        validator: RequestValidator,
        errors: ErrorMapper,
        error_domain: str,
        max_response_bytes: int,
    ) -> None:
        self.steps_for = steps_for
        self.validator = validator
        self.errors = errors
        self.error_domain = error_domain
        self.max_response_bytes = max_response_bytes

    def wrap(self, handler: grpc.RpcMethodHandler[Any, Any], policy: MethodPolicy) -> ChainedMethod:
        deserializer = handler.request_deserializer
        chain = MethodChain(
            policy,
            self.steps_for(policy),
            self.validator,
            message_class_of(deserializer) if deserializer else None,
        )
        serializer = handler.response_serializer
        serialize = _encoder(
            serializer or _as_is,
            response_class_of(policy) if serializer else None,
            self.max_response_bytes,
        )

        # The chain serializes all it answers, returned, yielded or written (interceptors.
        # streams), so a response that does not serialize, is of another type than the
        # method's, or is too large to send, is an error it maps like any other: grpc would
        # answer UNKNOWN with the exception's text (RESOURCE_EXHAUSTED for a large one; the
        # wrong type, it would send), after the chain had counted the call OK.
        # grpc is given bytes, and no serializer.
        codecs: dict[str, Any] = {
            "request_deserializer": lenient(deserializer) if deserializer else None,
            "response_serializer": None,
        }

        if policy.arity is Arity.UNARY_UNARY:
            behavior = self._unary_unary(handler.unary_unary, policy, chain, serialize)
            template = grpc.unary_unary_rpc_method_handler(behavior, **codecs)
            return ChainedMethod(template, "unary_unary", behavior)
        if policy.arity is Arity.UNARY_STREAM:
            behavior = self._streaming(handler.unary_stream, policy, chain, False, serialize)
            template = grpc.unary_stream_rpc_method_handler(behavior, **codecs)
            return ChainedMethod(template, "unary_stream", behavior)
        if policy.arity is Arity.STREAM_UNARY:
            behavior = self._stream_unary(handler.stream_unary, policy, chain, serialize)
            template = grpc.stream_unary_rpc_method_handler(behavior, **codecs)
            return ChainedMethod(template, "stream_unary", behavior)
        behavior = self._streaming(handler.stream_stream, policy, chain, True, serialize)
        template = grpc.stream_stream_rpc_method_handler(behavior, **codecs)
        return ChainedMethod(template, "stream_stream", behavior)

    # -- per-call plumbing ---------------------------------------------------------------

    def _failure(self, call: ServerCall, error: BaseException) -> Failure:
        """Records how the call failed and returns the status to abort it with; raises for a
        call grpc ended (cancelled by the caller, or its deadline passed), and re-raises the
        handler's own abort (its status is set)."""
        if isinstance(error, asyncio.CancelledError) and call.deadline_expired:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # our own cancellation (DeadlineWatch): answer the caller
            error = DeadlineExceeded("deadline exceeded")
        elif isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            # grpc cancels the handler when the caller cancels, and at the caller's deadline.
            passed = call.context.time_remaining() == 0
            call.code = grpc.StatusCode.DEADLINE_EXCEEDED if passed else grpc.StatusCode.CANCELLED
            raise error
        if isinstance(error, grpc.aio.AbortError):
            # The handler aborted by itself: the status is already set.
            call.code = call.context.code() or grpc.StatusCode.UNKNOWN
            raise error
        if isinstance(error, CallerDeadlinePassed):
            # grpc's core ended the call, so no status can reach the caller. Ended as a
            # cancellation, which grpc takes quietly (it logs a failed write as an error).
            call.code = grpc.StatusCode.DEADLINE_EXCEEDED
            raise asyncio.CancelledError from error
        correlation_id = call.correlation_id or "unknown"
        try:
            platform = self.errors.to_platform_error(error, correlation_id)
            details = encoded_status(platform, self.error_domain)
        except Exception as unmappable:
            # A service's `translate`, or an error's own details or metadata, failed: the
            # caller still gets the generic INTERNAL (grpc would send this failure's text).
            error = unmappable  # logged with the error it was mapping, its context
            platform = internal_error(correlation_id)
            details = encoded_status(platform, self.error_domain)
        call.code = platform.code
        call.error = error
        trailers: tuple[tuple[str, str | bytes], ...] = (
            (STATUS_DETAILS_KEY, details),
            (CORRELATION_HEADER, call.correlation_id),
        )
        if platform.retry_after is not None:
            # gRFC A6's hint, for clients that retry natively and ignore RetryInfo.
            trailers += ((PUSHBACK_KEY, str(round(platform.retry_after * 1000))),)
        return platform.code, platform.message, trailers

    # -- arities ---------------------------------------------------------------------------

    def _unary_unary(
        self, behavior: Any, policy: MethodPolicy, chain: MethodChain, serialize: Serializer
    ) -> Any:
        fail, enter, leave = self._failure, chain.enter, chain.leave

        async def handler(
            metadata: Metadata, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            call = ServerCall(policy, context, metadata)
            call.request = request
            call.received = 1
            try:
                enter(call)
                response = await behavior(request, context)
                if context.code() is not None and _status_set(call):
                    return None
                encoded = serialize(response)  # None or a non-message: INTERNAL, via fail
                call.sent = 1
                return encoded
            except BaseException as error:
                failure = fail(call, error)
            finally:
                leave(call)
            await context.abort(*failure)

        return handler

    def _stream_unary(
        self, behavior: Any, policy: MethodPolicy, chain: MethodChain, serialize: Serializer
    ) -> Any:
        fail, enter, leave, validate = self._failure, chain.enter, chain.leave, chain.validate

        async def handler(
            metadata: Metadata, requests: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            call = ServerCall(policy, context, metadata)
            try:
                enter(call)
                response = await behavior(
                    counted_requests(call, requests, validate),
                    StreamContext(call, serialize, validate),  # it may read with context.read()
                )
                if context.code() is not None and _status_set(call):
                    return None
                encoded = serialize(response)
                call.sent = 1
                return encoded
            except BaseException as error:
                failure = fail(call, error)
            finally:
                leave(call)
            await context.abort(*failure)

        return handler

    def _streaming(
        self,
        behavior: Any,
        policy: MethodPolicy,
        chain: MethodChain,
        streaming_in: bool,
        serialize: Serializer,
    ) -> Any:
        fail, enter, leave, validate = self._failure, chain.enter, chain.leave, chain.validate
        generates = inspect.isasyncgenfunction(behavior)

        async def handler(
            metadata: Metadata, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> None:
            call = ServerCall(policy, context, metadata)
            stream_context = StreamContext(call, serialize, validate)
            try:
                if streaming_in:
                    argument = counted_requests(call, request, validate)
                else:
                    argument = call.request = request
                    call.received = 1
                enter(call)
                if generates:
                    await write_responses(behavior(argument, stream_context), stream_context)
                else:
                    await behavior(argument, stream_context)
                if context.code() is not None:
                    _status_set(call)
                return
            except BaseException as error:
                failure = fail(call, error)
            finally:
                leave(call)
            if not await stream_context.settle():
                raise asyncio.CancelledError  # its first write failed: the call is over in grpc
            await context.abort(*failure)

        return handler
