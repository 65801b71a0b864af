"""The error model end to end: every kind, produced by a real call, details decoded."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2 as details_pb2
from google.rpc import status_pb2

from clients.channel import ChannelFactory
from clients.errors import details_of, error_info, status_of
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from interceptors import errors
from interceptors.correlation import HEADER as CORRELATION
from interceptors.errors import (
    REJECTION_CACHE_SIZE,
    InternalError,
    QuotaViolation,
    Shed,
    Throttled,
    encoded_status,
    to_status,
)
from tests.conftest import StartRuntime
from tests.support import echo
from tests.support.moto import Moto
from tests.support.net import BIN, ServiceProcess, running_service
from tests.test_metrics import scrape, value
from tests.test_streams import handled, replies_and_failure, series, serving


async def failing_call(client: EchoServiceClient, kind: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.echo(pb.EchoRequest(message=f"fail:{kind}"))
    return caught.value


def by_type(error: grpc.aio.AioRpcError) -> dict[type, object]:
    found: dict[type, object] = {}
    for detail in details_of(error):
        assert type(detail) not in found, "one detail of each type"
        found[type(detail)] = detail
    return found


@pytest.fixture
async def client(
    start_runtime: StartRuntime, single_attempt_channels: ChannelFactory
) -> EchoServiceClient:
    """A client that does not retry, so each call shows the server's own answer."""
    runtime = await start_runtime(echo.build)
    return EchoServiceClient(single_attempt_channels.connect(f"127.0.0.1:{runtime.grpc_port}"))


EXPECTED = {
    "invalid": (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", {details_pb2.BadRequest}),
    "precondition": (
        grpc.StatusCode.FAILED_PRECONDITION,
        "WRONG_STATE",
        {details_pb2.PreconditionFailure},
    ),
    "notfound": (grpc.StatusCode.NOT_FOUND, "ECHO_NOT_FOUND", {details_pb2.ResourceInfo}),
    "exists": (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS", set()),
    "aborted": (grpc.StatusCode.ABORTED, "ABORTED", {details_pb2.RetryInfo}),
    "denied": (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", set()),
    "unauthenticated": (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", set()),
    "exhausted": (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RESOURCE_EXHAUSTED",
        {details_pb2.QuotaFailure, details_pb2.RetryInfo},
    ),
    "unavailable": (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", {details_pb2.RetryInfo}),
    "deadline": (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", set()),
    "internal": (grpc.StatusCode.INTERNAL, "INTERNAL", set()),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
async def test_every_error_kind_has_its_code_and_details(
    client: EchoServiceClient, kind: str
) -> None:
    code, reason, extra = EXPECTED[kind]
    error = await failing_call(client, kind)
    assert error.code() == code
    found = by_type(error)
    assert set(found) == {details_pb2.ErrorInfo, *extra}
    info = found[details_pb2.ErrorInfo]
    assert isinstance(info, details_pb2.ErrorInfo)
    assert info.reason == reason
    assert info.domain == "echo.testing.internal"
    status = status_of(error)
    assert status is not None
    assert status.code == code.value[0]
    assert status.message == error.details()


async def test_details_carry_their_content(client: EchoServiceClient) -> None:
    bad = by_type(await failing_call(client, "invalid"))[details_pb2.BadRequest]
    assert isinstance(bad, details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("message", "must not say invalid")
    ]
    precondition = await failing_call(client, "precondition")
    info = error_info(precondition)
    assert info is not None
    assert dict(info.metadata) == {"currentState": "closed"}
    retry = by_type(await failing_call(client, "unavailable"))[details_pb2.RetryInfo]
    assert isinstance(retry, details_pb2.RetryInfo)
    assert retry.retry_delay.ToTimedelta().total_seconds() == pytest.approx(0.3)
    quota = by_type(await failing_call(client, "exhausted"))[details_pb2.QuotaFailure]
    assert isinstance(quota, details_pb2.QuotaFailure)
    assert quota.violations[0].subject == "client:x"
    resource = by_type(await failing_call(client, "notfound"))[details_pb2.ResourceInfo]
    assert isinstance(resource, details_pb2.ResourceInfo)
    assert resource.resource_name == "echo/1"


async def test_unexpected_exception_leaks_nothing_but_the_correlation_id(
    client: EchoServiceClient,
) -> None:
    correlation_id = f"test-{uuid.uuid4().hex}"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.echo(
            pb.EchoRequest(message="fail:internal"), metadata=((CORRELATION, correlation_id),)
        )
    error = caught.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == f"internal error (correlation id {correlation_id})"
    wire = repr(error.trailing_metadata()) + (error.details() or "") + repr(status_of(error))
    for secret in ("db-7", "hunter2", "RuntimeError", "Traceback", ".py"):
        assert secret not in wire
    info = error_info(error)
    assert info is not None
    assert dict(info.metadata) == {"correlationId": correlation_id}
    trailers: Any = error.trailing_metadata()
    assert dict(trailers)[CORRELATION] == correlation_id


def assert_generic_internal(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.INTERNAL
    assert (error.details() or "").startswith("internal error (correlation id ")
    wire = repr(error.trailing_metadata()) + (error.details() or "") + repr(status_of(error))
    for internal in ("TypeError", "NoneType", "Serialize", "Unexpected", "count"):
        assert internal not in wire
    info = error_info(error)
    assert info is not None
    assert info.reason == "INTERNAL"


async def test_an_error_that_cannot_be_mapped_is_the_generic_internal(
    client: EchoServiceClient,
) -> None:
    """Mapping the error failed (metadata not strings): grpc would have sent UNKNOWN
    with the TypeError's text."""
    assert_generic_internal(await failing_call(client, "unmappable"))


@pytest.mark.parametrize("answer", [echo.NOT_SERIALIZABLE, echo.NOT_A_MESSAGE])
async def test_a_response_that_does_not_serialize_is_the_generic_internal(
    client: EchoServiceClient, answer: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await client.echo(pb.EchoRequest(message=answer))
    assert_generic_internal(unary.value)


async def test_a_streamed_response_that_does_not_serialize_is_the_generic_internal(
    client: EchoServiceClient,
) -> None:
    received: list[int] = []

    async def read_all() -> None:
        async for reply in client.expand(pb.ExpandRequest(message=echo.NOT_SERIALIZABLE, count=2)):
            received.append(reply.index)

    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        await read_all()
    assert received == [0, 1]  # what serialized went out; then the status
    assert_generic_internal(streamed.value)


async def test_a_status_the_handler_set_itself_is_answered_and_counted(
    start_runtime: StartRuntime, single_attempt_channels: ChannelFactory
) -> None:
    """context.set_code: grpc's way to fail a call without raising, with or without a
    response (grpc discards it); the chain answers and counts that status."""
    runtime = await start_runtime(echo.build)
    client = EchoServiceClient(single_attempt_channels.connect(f"127.0.0.1:{runtime.grpc_port}"))
    for way in (echo.STATUS_SET, echo.STATUS_SET_WITH_MESSAGE):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.echo(pb.EchoRequest(message=way))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "set by the handler"
    samples = await asyncio.to_thread(scrape, runtime.admin.port)
    handled = {
        "grpc_type": "unary",
        "grpc_service": "grpcplatform.testing.v1.EchoService",
        "grpc_method": "Echo",
    }
    assert value(samples, "grpc_server_handled_total", grpc_code="NotFound", **handled) == 2
    assert value(samples, "grpc_server_msg_sent_total", **handled) == 0


class WritingEcho(echo.EchoService):
    """Expand written with context.write, the other form of a server stream."""

    async def expand(self, request: pb.ExpandRequest, context: Any) -> None:  # type: ignore[override]
        await context.write(pb.ExpandResponse(message=request.message, index=0))
        await context.write(
            None if request.message == echo.NOT_SERIALIZABLE else pb.ExpandResponse(index=1)
        )


async def test_a_handler_writing_its_stream_is_served_and_its_errors_mapped(
    start_runtime: StartRuntime, single_attempt_channels: ChannelFactory
) -> None:
    runtime = await start_runtime(serving(WritingEcho()))
    client = EchoServiceClient(single_attempt_channels.connect(f"127.0.0.1:{runtime.grpc_port}"))
    replies = [reply.index async for reply in client.expand(pb.ExpandRequest(message="x", count=1))]
    assert replies == [0, 1]

    answers, failure = await replies_and_failure(
        client.expand(pb.ExpandRequest(message=echo.NOT_SERIALIZABLE, count=1))
    )
    assert [answer.index for answer in answers] == [0]
    assert_generic_internal(failure)
    sent = await asyncio.to_thread(
        series, runtime, "grpc_server_msg_sent_total", "Expand", "server_stream"
    )
    assert sent == 3  # what was written: two, then one before the message that did not serialize


class LargeEcho(echo.EchoService):
    """Answers larger than a small GRPC_MAX_SEND_MESSAGE_BYTES, unary and streamed."""

    async def echo(self, request: pb.EchoRequest, context: Any) -> pb.EchoResponse:
        return pb.EchoResponse(message="x" * 200_000)

    async def expand(
        self, request: pb.ExpandRequest, context: Any
    ) -> AsyncIterator[pb.ExpandResponse]:
        yield pb.ExpandResponse(index=0)
        yield pb.ExpandResponse(message="x" * 200_000)


class WrongTypeEcho(echo.EchoService):
    """Answers with other methods' messages of the same wire shape as its own: protobuf
    serializes them, and the caller would parse them as its own, silently."""

    async def echo(self, request: pb.EchoRequest, context: Any) -> pb.EchoResponse:
        return pb.ChatResponse(message=request.message)  # type: ignore[return-value]

    async def expand(
        self, request: pb.ExpandRequest, context: Any
    ) -> AsyncIterator[pb.ExpandResponse]:
        yield pb.ExpandResponse(index=0)
        yield pb.CollectResponse(joined="x", count=1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("build", "env", "logged"),
    [
        (
            serving(LargeEcho()),
            {"GRPC_MAX_SEND_MESSAGE_BYTES": "100000"},
            ("over GRPC_MAX_SEND_MESSAGE_BYTES", "over GRPC_MAX_SEND_MESSAGE_BYTES"),
        ),
        (
            serving(WrongTypeEcho()),
            {},
            (
                "answered ChatResponse, not EchoResponse",
                "answered CollectResponse, not ExpandResponse",
            ),
        ),
    ],
    ids=["too-large", "wrong-type"],
)
async def test_a_response_grpc_would_mishandle_is_the_services_error(
    start_runtime: StartRuntime,
    single_attempt_channels: ChannelFactory,
    caplog: pytest.LogCaptureFixture,
    build: Any,
    env: dict[str, str],
    logged: tuple[str, str],
) -> None:
    """Too large: grpc alone refused it after the call was counted OK, and answered
    RESOURCE_EXHAUSTED. Another message type: grpc sent it, counted OK too."""
    runtime = await start_runtime(build, **env)
    client = EchoServiceClient(single_attempt_channels.connect(f"127.0.0.1:{runtime.grpc_port}"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.echo(pb.EchoRequest(message="m"))
    assert_generic_internal(caught.value)
    replies, failure = await replies_and_failure(
        client.expand(pb.ExpandRequest(message="m", count=1))
    )
    assert [reply.index for reply in replies] == [0]
    assert_generic_internal(failure)
    for method, kind in (("Echo", "unary"), ("Expand", "server_stream")):
        counts = {
            code: await asyncio.to_thread(handled, runtime, method, kind, code)
            for code in ("OK", "Internal")
        }
        assert counts == {"OK": 0, "Internal": 1}
    traces = [getattr(r, "stack_trace", "") for r in caplog.records if r.name == "grpc.access"]
    assert len(traces) == 2
    assert all(fragment in trace for fragment, trace in zip(logged, traces, strict=True))


async def test_errors_in_a_stream_are_mapped_too(client: EchoServiceClient) -> None:
    async def messages() -> AsyncIterator[pb.ChatRequest]:
        yield pb.ChatRequest(message="ok")
        yield pb.ChatRequest(message="fail:precondition")

    replies: list[str] = []

    async def converse() -> None:
        async for reply in client.chat(messages()):
            replies.append(reply.message)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await converse()
    assert replies == ["OK"]
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert info is not None
    assert info.reason == "WRONG_STATE"


@pytest.fixture(scope="module")
def accounts(
    tmp_path_factory: pytest.TempPathFactory, shared_moto: Moto
) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp("errors")
    with running_service("accounts", logs, shared_moto.ledger_env()) as service:
        yield service


def grpcurl(
    service: ServiceProcess, method: str, body: dict[str, object]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN / "grpcurl"),
            "-plaintext",
            "-format-error",
            "-d",
            json.dumps(body),
            service.target,
            method,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_insufficient_funds_through_grpcurl(accounts: ServiceProcess, tmp_path: Path) -> None:
    """The seed's example: withdraw 50 from 30, as a newcomer would with grpcurl."""
    opened = grpcurl(
        accounts,
        "ledger.v1.Accounts/OpenAccount",
        {"request_id": "if-open", "owner": "Ann", "currency_code": "EUR"},
    )
    account_id = json.loads(opened.stdout)["account"]["account_id"]
    money = {"currency_code": "EUR", "minor_units": "30"}
    deposit = grpcurl(
        accounts,
        "ledger.v1.Accounts/Deposit",
        {"request_id": "if-dep", "account_id": account_id, "amount": money},
    )
    assert deposit.returncode == 0, deposit.stderr
    withdraw = grpcurl(
        accounts,
        "ledger.v1.Accounts/Withdraw",
        {
            "request_id": "if-wd",
            "account_id": account_id,
            "amount": {"currency_code": "EUR", "minor_units": "50"},
        },
    )
    assert withdraw.returncode != 0
    status = json.loads(withdraw.stderr)  # -format-error prints the status as JSON on stderr
    assert status["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    info, precondition = status["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["reason"] == "INSUFFICIENT_FUNDS"
    assert info["domain"] == "accounts.ledger.internal"
    assert info["metadata"] == {
        "balanceMinorUnits": "30",
        "amountMinorUnits": "50",
        "currencyCode": "EUR",
    }
    assert precondition["@type"] == "type.googleapis.com/google.rpc.PreconditionFailure"
    assert precondition["violations"][0]["type"] == "INSUFFICIENT_FUNDS"
    read = grpcurl(accounts, "ledger.v1.Accounts/GetAccount", {"account_id": account_id})
    assert json.loads(read.stdout)["account"]["balance_minor_units"] == "30"


def test_a_load_rejection_is_encoded_once_in_a_bounded_cache() -> None:
    def shed(limit: int) -> Shed:
        return Shed(
            "server overloaded; retry later",
            reason="LOAD_SHED",
            metadata={"concurrencyLimit": str(limit)},
            retry_after=0.05,
        )

    def throttled(caller: str) -> Throttled:
        return Throttled(
            "rate limit exceeded",
            [QuotaViolation(subject=caller, description="5/s per caller")],
            reason="RATE_LIMITED",
            retry_after=0.2,
        )

    first = encoded_status(shed(100), "echo")
    assert first == to_status(shed(100), "echo").SerializeToString()
    assert encoded_status(shed(100), "echo") is first  # the cached bytes

    # Whatever differs in the status gives its own encoding: limit, domain, caller.
    for error, domain in ((shed(101), "echo"), (shed(100), "other"), (throttled("bob"), "echo")):
        encoded = encoded_status(error, domain)
        assert status_pb2.Status.FromString(encoded) == to_status(error, domain)
    alice = encoded_status(throttled("alice"), "echo")
    assert alice != encoded_status(throttled("bob"), "echo")
    assert status_pb2.Status.FromString(alice) == to_status(throttled("alice"), "echo")

    for limit in range(3 * REJECTION_CACHE_SIZE):
        encoded_status(shed(limit), "echo")
    assert 0 < len(errors._encoded_rejections) <= REJECTION_CACHE_SIZE

    # An error with per-call content (here a correlation id) is never cached.
    before = len(errors._encoded_rejections)
    internal = InternalError("internal error", metadata={"correlationId": uuid.uuid4().hex})
    assert status_pb2.Status.FromString(encoded_status(internal, "echo")) == to_status(
        internal, "echo"
    )
    assert len(errors._encoded_rejections) == before
