"""Service processes run on the loop `EVENT_LOOP` names: uvloop by default, asyncio on request.

The rest of the suite's process tests (shutdown drains, deadlines, shedding,
the ledger) run on the default, uvloop; this shows which loop a process is
on and that the standard library's still serves, fails and drains alike.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from clients.channel import ChannelFactory
from clients.errors import error_info
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from tests.support.net import running_service


@pytest.mark.parametrize(("setting", "expected"), [(None, "uvloop"), ("asyncio", "asyncio")])
async def test_the_process_serves_on_the_configured_loop(
    tmp_path: Path, setting: str | None, expected: str
) -> None:
    env = {"EVENT_LOOP": setting} if setting else {}
    with running_service("tests.support.echo:build", tmp_path, env) as service:
        channels = ChannelFactory()
        client = EchoServiceClient(channels.connect(service.target))
        assert (await client.echo(pb.EchoRequest(message="hello"))).message == "hello"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.echo(pb.EchoRequest(message="fail:precondition"))
        await channels.close()
        assert await asyncio.to_thread(service.terminate) == 0
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refused.value)
    assert info is not None
    assert info.reason == "WRONG_STATE"
    records = [json.loads(line) for line in service.stderr().splitlines() if line.strip()]
    serving = [record for record in records if record["message"] == "serving"]
    assert len(serving) == 1
    assert serving[0]["event_loop"] == expected
    assert any(record["message"] == "stopped" for record in records)
