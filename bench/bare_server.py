"""The baseline of `make bench`: the same Echo servicer on a bare `grpc.aio` server.

Same handlers, same gRPC options as the platform runtime, but no chain, no
health, no reflection, no admin port: what a hand-rolled grpcio service is.
Usage: python -m bench.bare_server PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

from server.config import ServerConfig
from tests.support.echo import EchoService


async def serve(port: int) -> None:
    options = ServerConfig.from_env({"SERVICE": "bare"}).grpc_options()
    server = grpc.aio.server(options=options)
    servicer = EchoService()
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
    asyncio.run(serve(int(sys.argv[1])))
