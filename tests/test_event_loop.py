"""Service processes run on the loop `EVENT_LOOP` names: uvloop by default, asyncio on request.

The rest of the suite's process tests (shutdown drains, deadlines, shedding,
the ledger) run on the default, uvloop; this shows which loop a process is
on and that the standard library's still serves, fails and drains alike,
and that `/metrics` tells how busy the loop is.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import pytest

from clients.channel import ChannelFactory
from clients.errors import error_info
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from tests.support.net import running_service
from tests.test_access_log import json_lines
from tests.test_metrics import scrape, value


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
    records = json_lines(service.stderr())
    serving = [record for record in records if record["message"] == "serving"]
    assert len(serving) == 1
    assert serving[0]["event_loop"] == expected
    assert any(record["message"] == "stopped" for record in records)


async def test_event_loop_cpu_counts_the_loop_threads_busy_time(tmp_path: Path) -> None:
    """Idle, the counter barely moves; while a handler burns the loop thread's CPU, it counts
    that time, and never outruns the wall clock (one thread's time, not the process's).

    The handler burns CPU time rather than wall time: on this shared host a thread
    spinning for 1 s of wall time has been given as little as 0.58 s of CPU. The
    queue-delay gate is off: calls holding the loop 100 ms each, longer on a busy host,
    are what it sheds (tests/test_queue_delay.py), and a shed call would end the test."""
    loop_cpu = "platform_server_event_loop_cpu_seconds_total"
    no_gate = {"SHED_QUEUE_DELAY_SECONDS": "0"}
    with running_service("tests.support.echo:build", tmp_path, no_gate) as service:
        channels = ChannelFactory()
        client = EchoServiceClient(channels.connect(service.target))
        await client.echo(pb.EchoRequest(message="warm"))
        idle_from = value(await asyncio.to_thread(scrape, service.admin_port), loop_cpu)
        await asyncio.sleep(1.0)
        busy_from = value(await asyncio.to_thread(scrape, service.admin_port), loop_cpu)
        started = time.monotonic()
        for _ in range(10):
            await client.echo(pb.EchoRequest(message="cpu:100"))  # 100 ms of the loop's CPU
        busy_to = value(await asyncio.to_thread(scrape, service.admin_port), loop_cpu)
        elapsed = time.monotonic() - started
        await channels.close()
    assert idle_from > 0
    assert busy_from - idle_from < 0.25
    assert 1.0 <= busy_to - busy_from <= elapsed + 0.05


async def test_ctrl_c_drains_like_sigterm_on_uvloop(tmp_path: Path) -> None:
    """asyncio.Runner has its own SIGINT handler (KeyboardInterrupt in the main task);
    the runtime's must win, so Ctrl-C drains and exits 0 as SIGTERM does."""
    with running_service("tests.support.echo:build", tmp_path) as service:
        service.process.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(service.process.wait, 30) == 0
    records = json_lines(service.stderr())
    requested = [record for record in records if record["message"] == "shutdown requested"]
    assert [record["signal"] for record in requested] == ["SIGINT"]
    assert records[-1]["message"] == "stopped"
