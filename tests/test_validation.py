"""Validation from the contract: invalid and hostile input never reaches a handler
and never becomes INTERNAL or UNKNOWN."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buf.validate import validate_pb2
from clients.channel import ChannelFactory
from clients.errors import details_of
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from interceptors.errors import STATUS_DETAILS_KEY, InvalidArgument, to_status
from interceptors.validation import MAX_VIOLATIONS, RequestValidator
from ledger.v1 import accounts_pb2, money_pb2, transfers_pb2
from ledger.v1.accounts_platform import ACCOUNTS_METHODS
from ledger.v1.transfers_platform import TRANSFERS_METHODS
from tests.conftest import StartRuntime
from tests.support import echo
from tests.support.messages import message_strategy
from tests.support.moto import Moto
from tests.support.net import ServiceProcess, running_service

ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.ABORTED,
}
REQUEST_TYPES = {
    **{p.full_method: getattr(accounts_pb2, f"{m}Request") for m, p in ACCOUNTS_METHODS.items()},
    **{p.full_method: getattr(transfers_pb2, f"{m}Request") for m, p in TRANSFERS_METHODS.items()},
}


@pytest.fixture(scope="module")
def ledger(
    tmp_path_factory: pytest.TempPathFactory, shared_moto: Moto
) -> Iterator[dict[str, ServiceProcess]]:
    logs = tmp_path_factory.mktemp("hostile")
    env = shared_moto.ledger_env(LOG_CALLS="NONE")
    with running_service("accounts", logs, env) as accounts:  # noqa: SIM117
        with running_service(
            "transfers", logs, {**env, "ACCOUNTS_TARGET": accounts.target}
        ) as transfers:
            yield {"ledger.v1.Accounts": accounts, "ledger.v1.Transfers": transfers}


def call_raw(target: str, method: str, payload: bytes) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        rpc = channel.unary_unary(method, None, None)  # raw bytes both ways
        try:
            rpc(payload, timeout=10)
        except grpc.RpcError as error:
            failed: Any = error
            code: grpc.StatusCode = failed.code()
            return code
    return grpc.StatusCode.OK


def assert_healthy(service: ServiceProcess) -> None:
    with grpc.insecure_channel(service.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("method", sorted(REQUEST_TYPES))
def test_hostile_messages_never_become_internal(
    ledger: dict[str, ServiceProcess], method: str
) -> None:
    service = ledger[method.split("/")[1]]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(message_strategy(REQUEST_TYPES[method].DESCRIPTOR))
    def send(message: Message) -> None:
        code = call_raw(service.target, method, message.SerializeToString())
        assert code in ACCEPTABLE, (code, message)

    send()
    assert_healthy(service)


@pytest.mark.parametrize("method", sorted(REQUEST_TYPES))
def test_random_bytes_never_become_internal(ledger: dict[str, ServiceProcess], method: str) -> None:
    service = ledger[method.split("/")[1]]

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=256))
    def send(payload: bytes) -> None:
        code = call_raw(service.target, method, payload)
        assert code in ACCEPTABLE, (code, payload)

    send()
    assert_healthy(service)


def test_undecodable_bytes_are_invalid_argument(ledger: dict[str, ServiceProcess]) -> None:
    service = ledger["ledger.v1.Accounts"]
    with grpc.insecure_channel(service.target) as channel:
        rpc = channel.unary_unary("/ledger.v1.Accounts/GetAccount", None, None)
        with pytest.raises(grpc.RpcError) as caught:
            rpc(b"\xff\xff\xff\xff", timeout=5)  # a truncated varint tag
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(error.trailing_metadata())
    status = status_pb2.Status.FromString(trailers[STATUS_DETAILS_KEY])
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert bad.field_violations[0].description == "malformed protobuf encoding"


async def test_one_field_violation_per_field_and_handler_not_reached(
    start_runtime: StartRuntime, channels: ChannelFactory, shared_moto: Moto
) -> None:
    from services.accounts.app import build

    env = shared_moto.ledger_env()
    runtime = await start_runtime(build, **env)
    from ledger.v1.accounts_platform import AccountsClient

    client = AccountsClient(channels.connect(f"127.0.0.1:{runtime.grpc_port}"))
    request = accounts_pb2.WithdrawRequest(
        request_id="",  # breaks min_len and the pattern: one violation, two descriptions
        account_id="not-a-uuid",
        amount=money_pb2.Money(currency_code="eu", minor_units=-5),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.withdraw(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = [d for d in details_of(caught.value) if isinstance(d, error_details_pb2.BadRequest)]
    fields = {v.field: v.description for v in bad.field_violations}
    assert set(fields) == {"request_id", "account_id", "amount.currency_code", "amount.minor_units"}
    assert ";" in fields["request_id"]
    # The message-level CEL rule is reported under its id.
    transfer = transfers_pb2.CreateTransferRequest(
        request_id="t",
        source_account_id=str(uuid.UUID(int=1)),
        destination_account_id=str(uuid.UUID(int=1)),
        amount=money_pb2.Money(currency_code="EUR", minor_units=1),
    )
    from ledger.v1.transfers_platform import TransfersClient
    from services.transfers.app import build as build_transfers

    transfers_runtime = await start_runtime(
        build_transfers, ACCOUNTS_TARGET=f"127.0.0.1:{runtime.grpc_port}", **env
    )
    transfers = TransfersClient(channels.connect(f"127.0.0.1:{transfers_runtime.grpc_port}"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await transfers.create_transfer(transfer)
    (bad,) = [d for d in details_of(caught.value) if isinstance(d, error_details_pb2.BadRequest)]
    assert [v.field for v in bad.field_violations] == ["transfer.distinct_accounts"]


async def test_invalid_message_in_a_client_stream_is_rejected(
    start_runtime: StartRuntime, channels: ChannelFactory
) -> None:
    runtime = await start_runtime(echo.build)
    client = EchoServiceClient(channels.connect(f"127.0.0.1:{runtime.grpc_port}"))

    async def messages() -> Any:
        yield pb.CollectRequest(message="fine")
        yield pb.CollectRequest(message="x" * 5000)  # max_len 4096

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.collect(messages())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in client.expand(pb.ExpandRequest(message="m", count=5000)):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _list_rules_type() -> Any:
    """A request type with rules on list items and map values (none in the contracts yet)."""
    file = descriptor_pb2.FileDescriptorProto(
        name="validation_test/v1/lists.proto",
        package="validation_test.v1",
        syntax="proto3",
        dependency=["buf/validate/validate.proto"],
    )
    message = file.message_type.add(name="Batch")
    entry = message.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    string, optional, repeated = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    entry.field.add(name="key", number=1, type=string, label=optional)
    entry.field.add(name="value", number=2, type=string, label=optional)
    codes = message.field.add(name="codes", number=1, type=string, label=repeated)
    codes.options.Extensions[validate_pb2.field].repeated.items.string.min_len = 2
    labels = message.field.add(
        name="labels",
        number=2,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        label=repeated,
        type_name=".validation_test.v1.Batch.LabelsEntry",
    )
    labels.options.Extensions[validate_pb2.field].map.values.string.min_len = 1
    pool = descriptor_pool.Default()  # protovalidate resolves the rules through this pool
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("validation_test.v1.Batch"))


Batch = _list_rules_type()


def test_violations_name_list_indexes_and_map_keys() -> None:
    with pytest.raises(InvalidArgument) as caught:
        RequestValidator().check(Batch(codes=["ok", "x", "fine", "y"], labels={"team": ""}))
    fields = [violation.field for violation in caught.value.violations]
    assert fields == ["codes[1]", "codes[3]", 'labels["team"]']


def test_a_request_with_many_bad_elements_gets_a_bounded_status() -> None:
    """Clients take about 8-16 KB of trailers; 50,000 bad elements made 1.5 MB."""
    with pytest.raises(InvalidArgument) as caught:
        RequestValidator().check(Batch(codes=["x"] * 50_000))
    error = caught.value
    assert len(error.violations) == MAX_VIOLATIONS
    assert error.message.endswith(f"and 49990 more fields ({MAX_VIOLATIONS} detailed)")
    assert len(to_status(error, "test").SerializeToString()) < 8_000
