"""Correlation ids and server spans with W3C trace context."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from clients.chain import ClientChain
from clients.channel import ChannelFactory
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import ECHO_SERVICE_METHODS, EchoServiceClient
from interceptors.call import ServerCall
from interceptors.correlation import HEADER
from interceptors.tracing import PROPAGATOR, PropagationLayer, carrier
from tests.conftest import MakeChannels, StartRuntime
from tests.support import echo
from tests.support.net import PYTHON, ROOT, running_service

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def correlation_of(client: EchoServiceClient, metadata: tuple[tuple[str, str], ...]) -> str:
    call = client._echo(pb.EchoRequest(), metadata=metadata, timeout=5)
    await call
    trailers: dict[str, Any] = dict(await call.trailing_metadata())
    value = trailers[HEADER]
    assert isinstance(value, str)
    return value


@pytest.fixture
async def client(start_runtime: StartRuntime, channels: ChannelFactory) -> EchoServiceClient:
    runtime = await start_runtime(echo.build)
    return EchoServiceClient(channels.connect(f"127.0.0.1:{runtime.grpc_port}"))


async def test_correlation_id_is_taken_echoed_or_made(client: EchoServiceClient) -> None:
    assert await correlation_of(client, ((HEADER, "order-123"),)) == "order-123"
    assert await correlation_of(client, (("traceparent", PARENT),)) == TRACE_ID
    made = await correlation_of(client, ())
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert made != await correlation_of(client, ())


FORKING_WORKERS = """
import json, os
from interceptors.correlation import new_correlation_id

made = [new_correlation_id()]
readers = []
for _ in range(3):  # a pre-fork server's workers
    reader, writer = os.pipe()
    if os.fork() == 0:
        os.write(writer, json.dumps([new_correlation_id() for _ in range(3)]).encode())
        os._exit(0)
    os.close(writer)
    readers.append(reader)
for reader in readers:
    made += json.loads(os.read(reader, 4096))
    os.wait()
made.append(new_correlation_id())
print(json.dumps(made))
"""


def test_forked_workers_never_share_correlation_ids() -> None:
    done = subprocess.run(
        [PYTHON, "-c", FORKING_WORKERS], cwd=ROOT, capture_output=True, check=True, timeout=60
    )
    made = json.loads(done.stdout)
    assert len(made) == 11
    assert all(re.fullmatch(r"[0-9a-f]{32}", made_id) for made_id in made)
    assert len(set(made)) == len(made)


@pytest.mark.parametrize("hostile", ["a" * 500, "x;y=1", "id with spaces", "<script>", "%0a%0d"])
async def test_hostile_correlation_id_is_replaced(client: EchoServiceClient, hostile: str) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", await correlation_of(client, ((HEADER, hostile),)))


async def test_server_spans_join_the_callers_trace(
    start_runtime: StartRuntime, channels: ChannelFactory
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime = await start_runtime(echo.build, tracing=provider)
    client = EchoServiceClient(channels.connect(f"127.0.0.1:{runtime.grpc_port}"))
    baggage = ("baggage", "tenant=acme")
    await client.echo(pb.EchoRequest(message="x"), metadata=(("traceparent", PARENT), baggage))
    with pytest.raises(grpc.aio.AioRpcError):
        await client.echo(pb.EchoRequest(message="fail:internal"))
    ok, failed = exporter.get_finished_spans()
    assert ok.name == "grpcplatform.testing.v1.EchoService/Echo"
    assert ok.kind == SpanKind.SERVER
    assert format(ok.context.trace_id, "032x") == TRACE_ID
    assert ok.parent is not None
    assert format(ok.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert ok.attributes is not None
    assert ok.attributes["rpc.system"] == "grpc"
    assert ok.attributes["rpc.method"] == "Echo"
    assert ok.attributes["rpc.grpc.status_code"] == 0
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    assert format(failed.context.trace_id, "032x") != TRACE_ID  # a new trace


def test_without_an_exporter_the_callers_context_still_flows() -> None:
    layer = PropagationLayer()
    policy = ECHO_SERVICE_METHODS["Echo"]
    context: Any = None  # the layer reads only the metadata
    call = ServerCall(policy, context, (("traceparent", PARENT), ("baggage", "tenant=acme")))
    layer.begin(call)
    try:
        assert call.trace_id == TRACE_ID
        current = trace.get_current_span().get_span_context()
        assert format(current.trace_id, "032x") == TRACE_ID  # outbound calls will carry it
        assert baggage.get_baggage("tenant") == "acme"
    finally:
        layer.end(call)
    assert not trace.get_current_span().get_span_context().is_valid
    quiet = ServerCall(policy, context, ())
    layer.begin(quiet)
    layer.end(quiet)
    assert quiet.trace_id == ""


async def test_client_spans_parent_the_downstream_server_span(
    start_runtime: StartRuntime, make_channels: MakeChannels
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    downstream = await start_runtime(echo.build, tracing=provider)
    chain = ClientChain(tracer=provider.get_tracer("test"))
    client = EchoServiceClient(
        make_channels(chain=chain).connect(f"127.0.0.1:{downstream.grpc_port}")
    )
    await client.echo(pb.EchoRequest(message="x"))
    spans = {span.kind: span for span in exporter.get_finished_spans()}
    server_span, client_span = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
    assert client_span.kind == SpanKind.CLIENT
    assert client_span.name == "grpcplatform.testing.v1.EchoService/Echo"
    assert server_span.parent is not None
    assert server_span.parent.span_id == client_span.context.span_id
    assert server_span.context.trace_id == client_span.context.trace_id


HOSTILE_BAGGAGE = "k" + " " * 7500 + "=v"  # quadratic in OpenTelemetry's baggage parser


def test_baggage_unsafe_to_parse_is_dropped_before_the_parser() -> None:
    plain = {"traceparent": PARENT, "baggage": "tenant=acme"}
    assert carrier(plain) is plain
    assert carrier(long := {"baggage": "a=b," * 2000}) is long  # 8000 characters: parsed
    for unsafe in (HOSTILE_BAGGAGE, "a=b," * 2100, "a=b" + "\t " * 8 + ",c=d"):
        kept = carrier({"traceparent": PARENT, "baggage": unsafe})
        assert kept == {"traceparent": PARENT}


async def test_a_call_with_hostile_trace_context_is_served_and_keeps_its_trace(
    client: EchoServiceClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[Mapping[str, object]] = []

    class Recording:
        """The real propagator, recording what the chain hands it."""

        def extract(self, metadata: Mapping[str, object]) -> Any:
            parsed.append(metadata)
            return PROPAGATOR.extract(metadata)

    monkeypatch.setattr("interceptors.tracing.PROPAGATOR", Recording())
    metadata = (("traceparent", PARENT), ("baggage", HOSTILE_BAGGAGE))
    assert await correlation_of(client, metadata) == TRACE_ID
    assert parsed
    assert all("baggage" not in carried for carried in parsed)  # never reached the parser


async def test_malformed_caller_context_is_not_logged_per_call(tmp_path: Path) -> None:
    """OpenTelemetry warns, quoting the header, about each malformed one it ignores."""
    with running_service("tests.support.echo:build", tmp_path) as service:
        channels = ChannelFactory()
        client = EchoServiceClient(channels.connect(service.target))
        metadata = (
            ("traceparent", PARENT),
            ("tracestate", '"message": "forged"} x'),
            ("baggage", "not a member," * 100),
        )
        for _ in range(3):
            await client.echo(pb.EchoRequest(message="x"), metadata=metadata)
        await channels.close()
        assert await asyncio.to_thread(service.terminate) == 0
    assert "forged" not in service.stderr()
    assert "not a member" not in service.stderr()
