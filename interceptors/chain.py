"""The server chain: wraps each method's handler in the layers, for all four arities.

`ServerChain.wrap(handler, policy)` is called once per method when the
server is assembled (server.runtime), not per call, and returns a handler
that per call:

1. creates the `ServerCall`, runs every layer's `begin` in order;
2. awaits the handler (within the local deadline, if the deadline layer set
   one), counting messages and validating each inbound stream message;
3. maps any exception to a rich status in one place (`ErrorMapper`,
   `to_status`) and aborts with it, keeping the correlation id in the
   trailers; caller cancellation is recorded as CANCELLED and re-raised;
4. runs every begun layer's `end` in reverse order.

Handlers are wrapped rather than put behind `grpc.aio.ServerInterceptor`:
an aio interceptor costs an extra coroutine per call and sees neither the
request nor the status (grpc/grpc#26229). Server-streaming handlers keep
their form: an async generator stays one, a handler using `context.write`
stays a coroutine (grpc/grpc#28728). The order of the layers is built in
server.chain.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NoReturn

import grpc

from interceptors.call import Layer, ServerCall
from interceptors.correlation import HEADER as CORRELATION_HEADER
from interceptors.errors import STATUS_DETAILS_KEY, DeadlineExceeded, ErrorMapper, to_status
from interceptors.policy import Arity, MethodPolicy
from interceptors.retry import PUSHBACK_KEY
from interceptors.validation import RequestValidator, lenient

_log = logging.getLogger(__name__)

LayerFactory = Callable[[MethodPolicy], Sequence[Layer]]


class ServerChain:
    def __init__(
        self,
        layers_for: LayerFactory,
        validator: RequestValidator,
        errors: ErrorMapper,
        error_domain: str,
    ) -> None:
        self.layers_for = layers_for
        self.validator = validator
        self.errors = errors
        self.error_domain = error_domain

    def wrap(self, handler: grpc.RpcMethodHandler[Any, Any], policy: MethodPolicy) -> Any:
        layers = tuple(self.layers_for(policy))
        serializers = {
            "request_deserializer": (
                lenient(handler.request_deserializer) if handler.request_deserializer else None
            ),
            "response_serializer": handler.response_serializer,
        }
        if policy.arity is Arity.UNARY_UNARY:
            return grpc.unary_unary_rpc_method_handler(
                self._unary_unary(handler.unary_unary, policy, layers), **serializers
            )
        if policy.arity is Arity.UNARY_STREAM:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, policy, layers, False), **serializers
            )
        if policy.arity is Arity.STREAM_UNARY:
            return grpc.stream_unary_rpc_method_handler(
                self._stream_unary(handler.stream_unary, policy, layers), **serializers
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, policy, layers, True), **serializers
        )

    # -- per-call plumbing ---------------------------------------------------------------

    @staticmethod
    def _begin(call: ServerCall, layers: Sequence[Layer]) -> None:
        for layer in layers:
            layer.begin(call)
            call.begun += 1

    @staticmethod
    def _end(call: ServerCall, layers: Sequence[Layer]) -> None:
        """Ends, in reverse, exactly the layers whose `begin` completed."""
        for index in range(call.begun - 1, -1, -1):
            try:
                layers[index].end(call)
            except Exception:
                _log.exception("chain layer failed at end of call")

    async def _fail(self, call: ServerCall, error: BaseException) -> NoReturn:
        if isinstance(error, asyncio.CancelledError) and call.deadline_expired:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # our own cancellation (DeadlineWatch): answer the caller
            error = DeadlineExceeded("deadline exceeded")
        elif isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            call.code = grpc.StatusCode.CANCELLED
            raise error
        if isinstance(error, grpc.aio.AbortError):
            # The handler aborted by itself: the status is already set.
            call.code = call.context.code() or grpc.StatusCode.UNKNOWN
            raise error
        platform = self.errors.to_platform_error(error, call.correlation_id or "unknown")
        call.code = platform.code
        call.error = error
        status = to_status(platform, self.error_domain)
        trailers: tuple[tuple[str, str | bytes], ...] = (
            (STATUS_DETAILS_KEY, status.SerializeToString()),
            (CORRELATION_HEADER, call.correlation_id),
        )
        if platform.retry_after is not None:
            # gRFC A6's hint, for clients that retry natively and ignore RetryInfo.
            trailers += ((PUSHBACK_KEY, str(round(platform.retry_after * 1000))),)
        await call.context.abort(platform.code, platform.message, trailers)
        raise AssertionError("abort returned")  # pragma: no cover - abort always raises

    def _inbound(self, call: ServerCall, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        check = self.validator.check

        async def counted() -> AsyncIterator[Any]:
            async for message in requests:
                call.received += 1
                check(message)
                yield message

        return counted()

    # -- arities ---------------------------------------------------------------------------

    def _unary_unary(self, behavior: Any, policy: MethodPolicy, layers: Sequence[Layer]) -> Any:
        fail, begin, end = self._fail, self._begin, self._end

        async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = ServerCall(policy, context)
            call.request = request
            call.received = 1
            try:
                begin(call, layers)
                response = await behavior(request, context)
                call.sent = 1
                return response
            except BaseException as error:
                await fail(call, error)
            finally:
                end(call, layers)

        return handler

    def _stream_unary(self, behavior: Any, policy: MethodPolicy, layers: Sequence[Layer]) -> Any:
        fail, begin, end, inbound = self._fail, self._begin, self._end, self._inbound

        async def handler(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = ServerCall(policy, context)
            try:
                begin(call, layers)
                response = await behavior(inbound(call, requests), context)
                call.sent = 1
                return response
            except BaseException as error:
                await fail(call, error)
            finally:
                end(call, layers)

        return handler

    def _streaming(
        self, behavior: Any, policy: MethodPolicy, layers: Sequence[Layer], streaming_in: bool
    ) -> Any:
        fail, begin, end, inbound = self._fail, self._begin, self._end, self._inbound

        def prepare(call: ServerCall, request: Any) -> Any:
            if streaming_in:
                return inbound(call, request)
            call.request = request
            call.received = 1
            return request

        if not inspect.isasyncgenfunction(behavior):
            # A handler using context.write: stay a coroutine.
            async def writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
                call = ServerCall(policy, context)
                try:
                    argument = prepare(call, request)
                    begin(call, layers)
                    await behavior(argument, context)
                except BaseException as error:
                    await fail(call, error)
                finally:
                    end(call, layers)

            return writer

        async def generator(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            call = ServerCall(policy, context)
            try:
                argument = prepare(call, request)
                begin(call, layers)
                async for response in behavior(argument, context):
                    call.sent += 1
                    yield response
            except BaseException as error:
                await fail(call, error)
            finally:
                end(call, layers)

        return generator
