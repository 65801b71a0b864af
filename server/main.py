"""Entry point: `grpc-platform [SERVICE]`, `python -m server [SERVICE]`.

Reads and validates all configuration, then builds the application through
its factory, and only then binds ports, so a bad setting exits 2 with one
line naming the variable and nothing starts half-way. Runs until SIGTERM or
SIGINT, drains (server.shutdown) and exits 0. The process runs on the event
loop `EVENT_LOOP` names (server.event_loop: uvloop by default).

Once serving, the start-up heap (modules, descriptors, compiled rules:
hundreds of thousands of objects that live as long as the process) is moved
out of the garbage collector's reach with `gc.freeze()`, as Instagram did
for its pre-fork servers and the `gc` documentation recommends. A full
collection otherwise walks all of it, a pause of tens of milliseconds that
showed up in the chain's p99 under load (`make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from clients.chain import ClientChain
from clients.channel import ChannelFactory, ChannelSettings
from clients.settings import ClientSettings, SettingsError
from interceptors.metrics import RpcMetrics
from interceptors.retry import RetryBudget
from server.application import RuntimeContext, load_factory
from server.config import ConfigError, EnvReader, ServerConfig
from server.event_loop import loop_factory
from server.logs import configure_logging
from server.runtime import Runtime, StartupError, process_registry, release
from server.shutdown import ShutdownSignal
from server.tracing import exporting, tracer_provider

EXIT_CONFIG = 2
EXIT_STARTUP = 1

_log = logging.getLogger(__name__)


async def serve(config: ServerConfig, env: Mapping[str, str]) -> None:
    factory = load_factory(config.service)
    registry = process_registry()
    tracing = tracer_provider(config)
    chain = ClientChain(
        settings=ClientSettings(EnvReader(env)),
        metrics=RpcMetrics(registry, "client"),
        budget=RetryBudget(),
        tracer=tracing.get_tracer("grpc-platform.client") if exporting(tracing) else None,
    )
    channels = ChannelFactory(ChannelSettings.from_env(EnvReader(env)), chain)
    application = await factory(RuntimeContext(config, EnvReader(env), channels, registry))
    try:
        runtime = Runtime(config, application, channels, registry, tracing)
    except ConfigError:  # a setting that only the application's methods can check
        await release(application)
        raise
    shutdown = ShutdownSignal()
    try:
        await runtime.start()
    except StartupError:
        await release(application)  # e.g. its AWS clients: exit cleanly
        raise
    gc.collect()  # what start-up left behind is freed, not frozen
    gc.freeze()
    received = await shutdown.wait()
    _log.info("shutdown requested", extra={"signal": received})
    await runtime.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="grpc-platform", description="Run a service of the gRPC platform."
    )
    parser.add_argument("service", nargs="?", help="overrides the SERVICE variable")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.service:
        env["SERVICE"] = args.service
    try:
        config = ServerConfig.from_env(env)
        configure_logging(config.service, config.log_level)
        with asyncio.Runner(loop_factory=loop_factory(config.event_loop)) as runner:
            runner.run(serve(config, env))
    except (ConfigError, SettingsError) as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as error:
        print(f"startup error: {error}", file=sys.stderr)
        return EXIT_STARTUP
    return 0
