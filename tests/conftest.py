"""Fixtures: real runtimes on loopback, in the test's own event loop."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from clients.chain import ClientChain
from clients.channel import ChannelFactory, ChannelSettings
from clients.resilience import Resilience
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from interceptors.retry import RetryPolicy
from server.application import AppFactory, RuntimeContext
from server.config import EnvReader, ServerConfig
from server.runtime import Runtime, process_registry
from tests.support.certs import Pair
from tests.support.evidence import grown, log_sizes, summaries
from tests.support.moto import FAKE_CREDENTIALS, Moto
from tests.support.net import HOST

StartRuntime = Callable[..., Awaitable[Runtime]]


# The sizes of the session's logs when the latest test ended: where the next one begins.
LOG_SIZES = pytest.StashKey[dict[Path, int]]()


@pytest.fixture(scope="session", autouse=True)
def session_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's temporary root, under which every test's processes write their logs."""
    return tmp_path_factory.getbasetemp()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report (setup, call or teardown) carries what the processes
    logged while it ran (tests.support.evidence)."""
    report = yield
    root = getattr(item, "funcargs", {}).get("session_temp")
    if root is None:
        return report
    if report.failed:
        before = item.config.stash.get(LOG_SIZES, {})
        report.sections.extend(summaries(grown(before, log_sizes(root))))
    if report.when == "teardown":
        item.config.stash[LOG_SIZES] = log_sizes(root)
    return report


@pytest.fixture
async def start_runtime() -> AsyncIterator[StartRuntime]:
    """Starts `factory`'s application on free ports; every runtime is stopped afterwards."""
    started: list[Runtime] = []

    async def start(
        factory: AppFactory, tracing: TracerProvider | None = None, **settings: str
    ) -> Runtime:
        env = {
            "SERVICE": "in-process",
            "GRPC_HOST": HOST,
            "GRPC_PORT": "0",
            "ADMIN_HOST": HOST,
            "ADMIN_PORT": "0",
            "SHUTDOWN_GRACE_SECONDS": "1",
            **settings,
        }
        config = ServerConfig.from_env(env)
        channels = ChannelFactory()
        registry = process_registry()
        context = RuntimeContext(config, EnvReader(env), channels, registry)
        application = await factory(context)
        runtime = Runtime(config, application, channels, registry, tracing=tracing)
        await runtime.start()
        started.append(runtime)
        return runtime

    yield start
    for runtime in reversed(started):
        await runtime.stop()


@pytest.fixture(scope="session")
def shared_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """One moto for the session; each ledger gets its own tables (`Moto.ledger_env`)."""
    os.environ.update(FAKE_CREDENTIALS)  # in-process AWS clients read them from here
    server = Moto(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Moto]:
    """A moto of the test's own, for tests that stop and restart it."""
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    server = Moto(tmp_path / "moto.log")
    server.start()
    yield server
    server.stop()


TlsClient = Callable[..., EchoServiceClient]


@pytest.fixture
async def tls_client() -> AsyncIterator[TlsClient]:
    """Echo clients of a runtime, each over its own channel: trusting the CA `root`
    (None: plaintext), presenting `client`'s certificate, if any; calls are tried once."""
    factories: list[ChannelFactory] = []

    def connect(
        runtime: Runtime, root: Path | None, client: Pair | None = None
    ) -> EchoServiceClient:
        settings = ChannelSettings(
            tls_root_ca=root,
            tls_cert=client.cert if client else None,
            tls_key=client.key if client else None,
        )
        chain = ClientChain(retry=RetryPolicy(max_attempts=1), resilience=Resilience(breaker=None))
        factory = ChannelFactory(settings, chain)
        factories.append(factory)
        return EchoServiceClient(factory.connect(f"127.0.0.1:{runtime.grpc_port}"))

    yield connect
    for factory in factories:
        await factory.close()


@pytest.fixture
async def channels() -> AsyncIterator[ChannelFactory]:
    factory = ChannelFactory()
    yield factory
    await factory.close()


@pytest.fixture
async def single_attempt_channels() -> AsyncIterator[ChannelFactory]:
    """Channels whose calls are never retried nor refused by a client breaker: to see a
    server's own answers."""
    chain = ClientChain(retry=RetryPolicy(max_attempts=1), resilience=Resilience(breaker=None))
    factory = ChannelFactory(chain=chain)
    yield factory
    await factory.close()
