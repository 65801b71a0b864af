"""Access logs: JSON lines with the platform's fields; redacted fields never appear."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.channel import ChannelFactory
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from ledger.v1 import accounts_pb2, money_pb2
from ledger.v1.accounts_platform import AccountsClient
from tests.support.moto import Moto
from tests.support.net import running_service

SECRET_OWNER = "Zebediah Quillfeather-Secret"
SECRET_MEMO = "memo-with-account-password-42"


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line must be JSON
    assert parsed
    return parsed


def access_lines(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["grpc_code"]: r for r in records if r.get("logger") == "grpc.access"}


async def test_success_client_error_and_server_error_lines(tmp_path: Path) -> None:
    settings = {"LOG_CALLS": "ALL", "TRACING_EXPORTER": "CONSOLE"}  # spans to stdout
    with running_service("tests.support.echo:build", tmp_path, settings) as service:
        channels = ChannelFactory()
        client = EchoServiceClient(channels.connect(service.target))
        await client.echo(pb.EchoRequest(message="hello"), metadata=(("x-correlation-id", "c-ok"),))
        for kind in ("precondition", "internal"):
            with pytest.raises(grpc.aio.AioRpcError):
                await client.echo(pb.EchoRequest(message=f"fail:{kind}"))
        await channels.close()
        assert await asyncio.to_thread(service.terminate) == 0
    lines = access_lines(json_lines(service.stderr()))
    ok, client_error, server_error = (lines["OK"], lines["FAILED_PRECONDITION"], lines["INTERNAL"])
    for line in (ok, client_error, server_error):
        assert line["service_name"] == "tests.support.echo:build"
        assert line["grpc_service"] == "grpcplatform.testing.v1.EchoService"
        assert line["grpc_method"] == "Echo"
        assert line["timestamp"].endswith("+00:00")
        assert isinstance(line["duration_ms"], float)
        assert len(line["trace_id"]) == 32
        assert line["peer"].startswith("ipv4:127.0.0.1:")
        assert line["correlation_id"]
    assert ok["log_level"] == "INFO"
    assert ok["correlation_id"] == "c-ok"
    assert "error_code" not in ok
    assert "stack_trace" not in ok
    assert client_error["log_level"] == "WARNING"
    assert client_error["error_code"] == "WRONG_STATE"
    assert client_error["error_message"] == "not now"
    assert client_error["request_details"] == {"message": "fail:precondition"}
    assert "stack_trace" not in client_error
    assert server_error["log_level"] == "ERROR"
    assert server_error["error_code"] == "INTERNAL"
    assert "Traceback" in server_error["stack_trace"]
    assert "db-7.internal.example" in server_error["stack_trace"]  # in the log, not on the wire


async def test_redacted_fields_never_reach_any_log_line(tmp_path: Path, shared_moto: Moto) -> None:
    settings = shared_moto.ledger_env(LOG_LEVEL="DEBUG", LOG_REDACT_FIELDS="memo", LOG_CALLS="ALL")
    with running_service("accounts", tmp_path, settings) as service:
        channels = ChannelFactory()
        client = AccountsClient(channels.connect(service.target))
        opened = await client.open_account(
            accounts_pb2.OpenAccountRequest(
                request_id="redact-1", owner=SECRET_OWNER, currency_code="EUR"
            )
        )
        account_id = opened.account.account_id
        with pytest.raises(grpc.aio.AioRpcError):
            await client.withdraw(
                accounts_pb2.WithdrawRequest(
                    request_id="redact-2",
                    account_id=account_id,
                    amount=money_pb2.Money(currency_code="EUR", minor_units=5),
                    memo=SECRET_MEMO,
                )
            )
        with pytest.raises(grpc.aio.AioRpcError):  # invalid: logged with its request
            await client.open_account(
                accounts_pb2.OpenAccountRequest(request_id="", owner=SECRET_OWNER)
            )
        await channels.close()
        assert await asyncio.to_thread(service.terminate) == 0
    output = service.stderr()
    records = json_lines(output)
    assert SECRET_OWNER not in output
    assert SECRET_MEMO not in output
    details = [r["request_details"] for r in records if "request_details" in r]
    assert {"request_id": "redact-1", "owner": "[REDACTED]", "currency_code": "EUR"} in details
    withdraw = next(d for d in details if d.get("request_id") == "redact-2")
    assert withdraw["memo"] == "[REDACTED]"
    assert withdraw["amount"] == {"currency_code": "EUR", "minor_units": 5}


async def test_load_rejections_are_counted_not_logged_one_by_one(
    tmp_path: Path, single_attempt_channels: ChannelFactory
) -> None:
    """At LOG_CALLS=ERRORS a flood of rate-limited calls must not become a flood of lines."""
    settings = {"LOG_CALLS": "ERRORS", "RATE_LIMIT_RPS": "1", "RATE_LIMIT_BURST": "1"}
    with running_service("tests.support.echo:build", tmp_path, settings) as service:
        client = EchoServiceClient(single_attempt_channels.connect(service.target))
        codes = []
        # alice floods; bob (a bucket of his own) makes one call that fails for itself
        for message, caller in [("ok", "alice")] * 4 + [("fail:precondition", "bob")]:
            try:
                await client.echo(
                    pb.EchoRequest(message=message), metadata=(("x-client-id", caller),)
                )
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
        assert await asyncio.to_thread(service.terminate) == 0
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 2
    assert codes[-1] == grpc.StatusCode.FAILED_PRECONDITION
    records = json_lines(service.stderr())
    assert [r["grpc_code"] for r in records if r.get("logger") == "grpc.access"] == [
        "FAILED_PRECONDITION"
    ]


async def test_hostile_and_undecodable_requests_give_small_access_lines(tmp_path: Path) -> None:
    """A failed call's request is logged, and its caller chose it: a 1 MB invalid
    string is cut, bytes that are not a message are counted, and each call still gets
    its one access line."""
    with running_service("tests.support.echo:build", tmp_path) as service:
        channels = ChannelFactory()
        client = EchoServiceClient(channels.connect(service.target))
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await client.echo(pb.EchoRequest(message="\x01" * 1_000_000))
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        raw = channels.connect(service.target).channel.unary_unary(
            "/grpcplatform.testing.v1.EchoService/Echo", None, None
        )
        with pytest.raises(grpc.aio.AioRpcError) as undecodable:
            await raw(b"\xff\xff\xff\xff", timeout=5)
        assert undecodable.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await channels.close()
        assert await asyncio.to_thread(service.terminate) == 0
    output = service.stderr()
    records = json_lines(output)
    assert not [r for r in records if r["log_level"] == "ERROR"], output[:2000]
    (cut, counted) = [r for r in records if r.get("logger") == "grpc.access"]
    assert cut["request_details"]["message"].endswith("...[1000000 chars]")
    assert counted["request_details"] == "<4 bytes, not a valid message>"
    assert max(len(line) for line in output.splitlines()) < 8_000


async def slowly(count: int) -> AsyncIterator[pb.CollectRequest]:
    for _ in range(count):
        await asyncio.sleep(0.2)
        yield pb.CollectRequest(message="part")


SLOW_OK = ("Echo", "OK", "WARNING", True)
SLOW_FAILURE = ("Echo", "FAILED_PRECONDITION", "WARNING", True)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"LOG_SLOW_CALLS_SECONDS": "0.3"}, [SLOW_OK, SLOW_FAILURE]),
        (
            {"LOG_SLOW_CALLS_SECONDS": "0.3", "LOG_CALLS": "ALL"},
            [
                ("Echo", "OK", "INFO", False),
                SLOW_OK,
                SLOW_FAILURE,
                ("Collect", "OK", "INFO", False),
            ],
        ),
        ({"LOG_SLOW_CALLS_SECONDS": "0"}, [("Echo", "FAILED_PRECONDITION", "WARNING", False)]),
        ({"LOG_SLOW_CALLS_SECONDS": "0.3", "LOG_CALLS": "NONE"}, []),
    ],
    ids=["errors", "all", "off", "none"],
)
async def test_a_slow_unary_call_is_logged_even_when_it_succeeds(
    tmp_path: Path, settings: dict[str, str], expected: list[tuple[str, str, str, bool]]
) -> None:
    """A fast call, a slow one (0.6 s), a slow failure and a stream open for 0.6 s: only
    the unary calls past the threshold are slow; a stream lasts as long as it is used."""
    with running_service("tests.support.echo:build", tmp_path, settings) as service:
        channels = ChannelFactory()
        client = EchoServiceClient(channels.connect(service.target))
        await client.echo(pb.EchoRequest(message="fast"))
        await client.echo(pb.EchoRequest(message="slow", delay_ms=600))
        with pytest.raises(grpc.aio.AioRpcError):
            await client.echo(pb.EchoRequest(message="fail:precondition", delay_ms=600))
        assert (await client.collect(slowly(3))).count == 3
        await channels.close()
        assert await asyncio.to_thread(service.terminate) == 0
    lines = [r for r in json_lines(service.stderr()) if r.get("logger") == "grpc.access"]
    seen = [(r["grpc_method"], r["grpc_code"], r["log_level"], r.get("slow", False)) for r in lines]
    assert seen == expected
    for slow in (line for line in lines if line.get("slow")):
        # The threshold, not the delay: uvloop's timers may end a sleep a millisecond early.
        assert slow["duration_ms"] >= 300
        assert slow["request_details"]["delay_ms"] == 600
