"""max_connection_age makes clients reconnect, so they spread over new pods behind an NLB."""

from __future__ import annotations

import time

from clients.channel import ChannelFactory
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from tests.conftest import StartRuntime
from tests.support import echo


async def test_connections_are_recycled_after_max_age(
    start_runtime: StartRuntime, channels: ChannelFactory
) -> None:
    runtime = await start_runtime(
        echo.build,
        GRPC_MAX_CONNECTION_AGE_SECONDS="0.5",
        GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS="5",
    )
    client = EchoServiceClient(channels.connect(f"127.0.0.1:{runtime.grpc_port}"))
    peers: set[str] = set()
    deadline = time.monotonic() + 15
    # Calls keep succeeding while the server recycles connections under them.
    while len(peers) < 3 and time.monotonic() < deadline:
        reply = await client.echo(pb.EchoRequest(message="x", delay_ms=50))
        assert reply.message == "x"
        peers.add(reply.peer)
    assert len(peers) >= 3, peers


async def test_call_spanning_the_age_finishes_within_the_grace(
    start_runtime: StartRuntime, channels: ChannelFactory
) -> None:
    runtime = await start_runtime(
        echo.build,
        GRPC_MAX_CONNECTION_AGE_SECONDS="0.3",
        GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS="5",
    )
    client = EchoServiceClient(channels.connect(f"127.0.0.1:{runtime.grpc_port}"))
    reply = await client.echo(pb.EchoRequest(message="long", delay_ms=1500))
    assert reply.message == "long"
