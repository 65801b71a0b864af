"""Streaming calls through the chain (interceptors.streams): counted, validated, and
ended with a status when the server's deadline passes while a write waits on the client."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs 1.53

from clients.channel import ChannelFactory
from clients.errors import details_of, error_info
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import ECHO_SERVICE_METHODS, EchoServiceClient
from interceptors.correlation import HEADER as CORRELATION
from interceptors.correlation import current_correlation_id
from server.application import Application, RuntimeContext
from server.runtime import Runtime
from tests.conftest import StartRuntime
from tests.support import echo
from tests.support.net import poll
from tests.test_deadlines import raw_echo
from tests.test_metrics import scrape, value

SERVICE = "grpcplatform.testing.v1.EchoService"


def series(runtime: Runtime, name: str, method: str, kind: str, **labels: str) -> float:
    """One of the server's metric series for an EchoService method, scraped now."""
    return value(
        scrape(runtime.admin.port),
        name,
        grpc_type=kind,
        grpc_service=SERVICE,
        grpc_method=method,
        **labels,
    )


def handled(runtime: Runtime, method: str, kind: str, code: str) -> float:
    return series(runtime, "grpc_server_handled_total", method, kind, grpc_code=code)


async def counted_once(runtime: Runtime, method: str, kind: str, code: str) -> None:
    """Waits until the server has counted one call of `method` ended with `code`."""
    count = await asyncio.to_thread(
        poll, lambda: handled(runtime, method, kind, code), 15, f"{method} {code}"
    )
    assert count == 1


async def replies_and_failure(call: Any) -> tuple[list[Any], grpc.aio.AioRpcError]:
    """Reads a stream to its end, which must be a failure: what came before it, and it."""
    replies: list[Any] = []
    try:
        async for reply in call:
            replies.append(reply)
    except grpc.aio.AioRpcError as failure:
        return replies, failure
    raise AssertionError("the stream ended without an error")


def serving(servicer: echo.EchoService) -> Any:
    async def build(context: RuntimeContext) -> Application:
        return Application(servicers=[servicer])

    return build


class StallingChat(echo.EchoService):
    """Chat answering each message with a large one; records where its generator was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.closed_in: list[str | None] = []  # the correlation id current when it was closed

    async def chat(
        self, request_iterator: AsyncIterator[pb.ChatRequest], context: echo.Context
    ) -> AsyncIterator[pb.ChatResponse]:
        try:
            async for request in request_iterator:
                yield pb.ChatResponse(message=request.message)
        finally:
            self.closed_in.append(current_correlation_id())


def stalled_chat(channel: grpc.aio.Channel) -> Any:
    """A Chat whose client sends far more than its window holds of answers, reading none."""
    chat = channel.stream_stream(
        ECHO_SERVICE_METHODS["Chat"].full_method,
        request_serializer=pb.ChatRequest.SerializeToString,
        response_deserializer=pb.ChatResponse.FromString,
    )

    async def requests() -> AsyncIterator[pb.ChatRequest]:
        for _ in range(100_000):
            yield pb.ChatRequest(message="x" * 4000)

    return chat(requests(), timeout=60)


async def test_a_stream_stuck_on_a_client_that_stopped_reading_gets_deadline_exceeded(
    start_runtime: StartRuntime,
) -> None:
    servicer = StallingChat()
    runtime = await start_runtime(serving(servicer), MAX_DEADLINE_SECONDS="0.5")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        started = time.monotonic()
        call = stalled_chat(channel)
        # The handler waits to write, and the server's own 0.5 s deadline ends the call;
        # it is counted then, not when the client reads its status.
        await counted_once(runtime, "Chat", "bidi_stream", "DeadlineExceeded")
        assert len(servicer.closed_in) == 1  # the generator was closed, not left to the GC
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass  # the status waited behind the answers written before the deadline
        elapsed = time.monotonic() - started
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    info = error_info(caught.value)
    assert info is not None
    assert info.reason == "DEADLINE_EXCEEDED"
    assert elapsed < 30  # the server's deadline ended it, not the caller's 60 s
    trailers: Any = caught.value.trailing_metadata()
    assert servicer.closed_in == [dict(trailers)[CORRELATION]]  # closed in the call, its context


async def test_a_client_that_never_reads_is_let_go_with_its_connection(
    start_runtime: StartRuntime,
) -> None:
    runtime = await start_runtime(
        echo.build,
        MAX_DEADLINE_SECONDS="0.5",
        GRPC_MAX_CONNECTION_AGE_SECONDS="1",
        GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS="1",
    )
    # The narrow window makes sure the answers fill it before the deadline: with BDP
    # probing, a window grown past what a slow host wrote in 0.5 s let the status through.
    async with narrow_window_channel(runtime) as channel:
        call = stalled_chat(channel)
        await counted_once(runtime, "Chat", "bidi_stream", "DeadlineExceeded")
        closed_at = time.monotonic() + 15
        while not call.done():  # the connection's age and grace passed: grpc closed it
            assert time.monotonic() < closed_at, "the connection was not closed"
            await asyncio.sleep(0.05)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
    # What the server wrote and could not send went with the connection, the status too.
    assert caught.value.code() == grpc.StatusCode.INTERNAL  # grpc's "Internal error from Core"


class FirstAnswerTooBig(echo.EchoService):
    """Expand whose first answer is larger than the client's flow-control window."""

    async def expand(
        self, request: pb.ExpandRequest, context: echo.Context
    ) -> AsyncIterator[pb.ExpandResponse]:
        yield pb.ExpandResponse(message="x" * 1_000_000)
        yield pb.ExpandResponse(index=1)


class FirstWriteTooBig(echo.EchoService):
    """The same, written with context.write, the other form of a server stream."""

    async def expand(self, request: pb.ExpandRequest, context: Any) -> None:  # type: ignore[override]
        await context.write(pb.ExpandResponse(message="x" * 1_000_000))
        await context.write(pb.ExpandResponse(index=1))


def narrow_window_channel(runtime: Runtime) -> grpc.aio.Channel:
    """Without BDP probing the client's window stays at 64 KB while it reads nothing."""
    options = [("grpc.http2.bdp_probe", 0)]
    return grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}", options=options)


def expand_of(channel: grpc.aio.Channel) -> Any:
    return channel.unary_stream(
        ECHO_SERVICE_METHODS["Expand"].full_method,
        request_serializer=pb.ExpandRequest.SerializeToString,
        response_deserializer=pb.ExpandResponse.FromString,
    )


async def read_after_the_end(
    runtime: Runtime, timeout: float, code: str
) -> tuple[list[Any], grpc.aio.AioRpcError, float]:
    """Calls Expand without reading until the server counts the call ended with `code`,
    then reads: the replies, the failure that ends them, and how long reading took."""
    async with narrow_window_channel(runtime) as channel:
        call = expand_of(channel)(pb.ExpandRequest(message="m", count=1), timeout=timeout)
        await counted_once(runtime, "Expand", "server_stream", code)
        started = time.monotonic()
        replies, failure = await replies_and_failure(call)
        return replies, failure, time.monotonic() - started


@pytest.mark.parametrize("servicer_class", [FirstAnswerTooBig, FirstWriteTooBig])
async def test_a_first_write_stuck_on_the_client_still_ends_with_a_status(
    start_runtime: StartRuntime, servicer_class: type[echo.EchoService]
) -> None:
    runtime = await start_runtime(serving(servicer_class()), MAX_DEADLINE_SECONDS="0.5")
    replies, failure, elapsed = await read_after_the_end(runtime, 60, "DeadlineExceeded")
    # Handed to grpc before the deadline: it still arrives.
    assert [len(reply.message) for reply in replies] == [1_000_000]
    assert failure.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    info = error_info(failure)
    assert info is not None  # the server's status, not the client's own deadline
    assert info.reason == "DEADLINE_EXCEEDED"
    assert elapsed < 30
    sent = await asyncio.to_thread(
        series, runtime, "grpc_server_msg_sent_total", "Expand", "server_stream"
    )
    assert sent == 1


@pytest.mark.parametrize("servicer_class", [FirstAnswerTooBig, FirstWriteTooBig])
async def test_a_write_cut_short_by_the_callers_deadline_counts_deadline_exceeded(
    start_runtime: StartRuntime,
    servicer_class: type[echo.EchoService],
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = await start_runtime(serving(servicer_class()))
    async with narrow_window_channel(runtime) as channel:
        # The caller's own deadline, within the server's maximum: grpc's core enforces it,
        # and the write waiting on the window fails there.
        call = expand_of(channel)(pb.ExpandRequest(message="m", count=1), timeout=0.5)
        assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await counted_once(runtime, "Expand", "server_stream", "DeadlineExceeded")
    assert await asyncio.to_thread(handled, runtime, "Expand", "server_stream", "Internal") == 0
    grpc_errors = [
        r for r in caplog.records if r.name.startswith("grpc") and r.levelno >= logging.WARNING
    ]
    assert [r.name for r in grpc_errors] == ["grpc.access"]  # the call's line, nothing from grpc
    (line,) = [r for r in caplog.records if r.name == "grpc.access"]
    assert getattr(line, "stack_trace", None) is None


class FirstWriteTimedOut(echo.EchoService):
    """A handler that gives up on its own first write, as `asyncio.timeout` makes it."""

    async def expand(self, request: pb.ExpandRequest, context: Any) -> None:  # type: ignore[override]
        async with asyncio.timeout(0.3):
            await context.write(pb.ExpandResponse(message="x" * 1_000_000))


async def test_a_handler_giving_up_on_its_first_write_still_answers(
    start_runtime: StartRuntime,
) -> None:
    runtime = await start_runtime(serving(FirstWriteTimedOut()))
    # The caller's deadline is within the server's maximum: no deadline watch.
    replies, failure, elapsed = await read_after_the_end(runtime, 20, "Internal")
    assert [len(reply.message) for reply in replies] == [1_000_000]
    assert failure.code() == grpc.StatusCode.INTERNAL  # its TimeoutError, mapped
    assert error_info(failure) is not None  # the chain's status, not the caller's deadline
    assert elapsed < 10


async def test_a_call_past_the_callers_deadline_counts_deadline_exceeded(
    start_runtime: StartRuntime,
) -> None:
    runtime = await start_runtime(echo.build)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw_echo(channel)(pb.EchoRequest(message="slow", delay_ms=3000), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # grpc cancelled the handler at the caller's deadline: counted as what it was.
        await counted_once(runtime, "Echo", "unary", "DeadlineExceeded")
    assert await asyncio.to_thread(handled, runtime, "Echo", "unary", "Canceled") == 0


class ReadingEcho(echo.EchoService):
    """Collect written with `context.read()`, grpc.aio's other form of a client stream."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    async def collect(self, request_iterator: Any, context: Any) -> pb.CollectResponse:
        while (request := await context.read()) is not EOF:
            self.seen.append(request.message)
        return pb.CollectResponse(joined=" ".join(self.seen), count=len(self.seen))


async def test_messages_read_with_context_read_are_validated_and_counted(
    start_runtime: StartRuntime, channels: ChannelFactory
) -> None:
    servicer = ReadingEcho()
    runtime = await start_runtime(serving(servicer))
    client = EchoServiceClient(channels.connect(f"127.0.0.1:{runtime.grpc_port}"))

    async def messages(*texts: str) -> Any:
        for text in texts:
            yield pb.CollectRequest(message=text)

    reply = await client.collect(messages("a", "b"))
    assert (reply.joined, reply.count) == ("a b", 2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.collect(messages("c", "x" * 5000))  # max_len 4096
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = [d for d in details_of(caught.value) if isinstance(d, error_details_pb2.BadRequest)]
    assert [v.field for v in bad.field_violations] == ["message"]
    assert servicer.seen == ["a", "b", "c"]  # the handler never saw the invalid message
    received = await asyncio.to_thread(
        series, runtime, "grpc_server_msg_received_total", "Collect", "client_stream"
    )
    assert received == 4
