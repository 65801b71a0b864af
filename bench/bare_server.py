"""The baseline of `make bench`: the same Echo servicer on a bare `grpc.aio` server.

Same handlers, same gRPC options as the platform runtime, but no chain, no
health, no reflection, no admin port: what a hand-rolled grpcio service is.
Its methods are registered as grpcio's generated `add_*Servicer_to_server`
registers them (`add_registered_method_handlers`). With `--table` they are
served from the platform's one generic handler instead (server.dispatch),
which separates what the chain costs from what the dispatch saves. With
`--uvloop` it runs on uvloop, the platform runtime's loop (server.event_loop),
which separates what the chain costs from what the loop saves.
Usage: python -m bench.bare_server PORT [--table] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from server.config import ServerConfig
from server.dispatch import MethodTable
from server.event_loop import loop_factory
from tests.support.echo import EchoService


async def serve(port: int, table: bool) -> None:
    options = ServerConfig.from_env({"SERVICE": "bare"}).grpc_options()
    server = grpc.aio.server(options=options)
    servicer = EchoService()
    if table:
        methods = MethodTable()
        methods.add(servicer.SERVICE_NAME, servicer.rpc_method_handlers())
        server.add_generic_rpc_handlers((methods,))
    else:
        server.add_registered_method_handlers(  # type: ignore[attr-defined]
            servicer.SERVICE_NAME, servicer.rpc_method_handlers()
        )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--uvloop", action="store_true")
    arguments = parser.parse_args()
    with asyncio.Runner(
        loop_factory=loop_factory("UVLOOP" if arguments.uvloop else "ASYNCIO")
    ) as runner:
        runner.run(serve(arguments.port, arguments.table))
