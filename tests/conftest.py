"""Fixtures: real runtimes on loopback, in the test's own event loop."""

from __future__ import annotations

import importlib
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any, Protocol

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


@pytest.fixture(autouse=True)
def channels_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails a test that leaves a `grpc.aio` channel open. Why: grpc shares subchannels
    process-wide between channels of the same settings, so an open channel whose target
    went away keeps that address in reconnect backoff, and a later test's server on the
    same port 0 is refused ("Connection refused" while it listens) until the backoff ends.
    Checked after the other function-scoped fixtures' teardown, so runtimes have closed
    their own. A wider-scoped fixture must not open grpc.aio channels during a test (it
    would be flagged, and its channel closed); sync `grpc` channels are not tracked."""
    # grpc.aio's concrete channel and its core channel are private (no stubs): Any.
    channel_class: Any = importlib.import_module("grpc.aio._channel").Channel
    opened: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
    original_init = channel_class.__init__

    def tracked_init(self: Any, target: str, *args: object, **kwargs: object) -> None:
        original_init(self, target, *args, **kwargs)
        opened[self] = target

    monkeypatch.setattr(channel_class, "__init__", tracked_init)
    yield
    left_open = [
        (channel, target) for channel, target in opened.items() if not channel._channel.closed()
    ]
    for channel, _ in left_open:
        channel._channel.close()
    assert not left_open, f"channels left open: {sorted(target for _, target in left_open)}"


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


class MakeChannels(Protocol):
    def __call__(
        self, settings: ChannelSettings | None = None, chain: ClientChain | None = None
    ) -> ChannelFactory: ...


@pytest.fixture
async def make_channels() -> AsyncIterator[MakeChannels]:
    """`ChannelFactory(settings, chain)`, each closed when the test ends."""
    made: list[ChannelFactory] = []

    def make(
        settings: ChannelSettings | None = None, chain: ClientChain | None = None
    ) -> ChannelFactory:
        factory = ChannelFactory(settings, chain)
        made.append(factory)
        return factory

    yield make
    for factory in made:
        await factory.close()


TlsClient = Callable[..., EchoServiceClient]


@pytest.fixture
def tls_client(make_channels: MakeChannels) -> TlsClient:
    """Echo clients of a runtime, each over its own channel: trusting the CA `root`
    (None: plaintext), presenting `client`'s certificate, if any; calls are tried once."""

    def connect(
        runtime: Runtime, root: Path | None, client: Pair | None = None
    ) -> EchoServiceClient:
        settings = ChannelSettings(
            tls_root_ca=root,
            tls_cert=client.cert if client else None,
            tls_key=client.key if client else None,
        )
        chain = ClientChain(retry=RetryPolicy(max_attempts=1), resilience=Resilience(breaker=None))
        channels = make_channels(settings, chain)
        return EchoServiceClient(channels.connect(f"127.0.0.1:{runtime.grpc_port}"))

    return connect


@pytest.fixture
def channels(make_channels: MakeChannels) -> ChannelFactory:
    return make_channels()


@pytest.fixture
def single_attempt_channels(make_channels: MakeChannels) -> ChannelFactory:
    """Channels whose calls are never retried nor refused by a client breaker: to see a
    server's own answers."""
    return make_channels(
        chain=ClientChain(retry=RetryPolicy(max_attempts=1), resilience=Resilience(breaker=None))
    )
