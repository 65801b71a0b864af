"""Client settings from the environment: defaults, per dependency, per method, bad values."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import grpc
import pytest

from clients.chain import ClientChain
from clients.channel import ChannelSettings
from clients.settings import ClientSettings, SettingsError
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import ECHO_SERVICE_METHODS, EchoServiceClient
from server.config import ConfigError, EnvReader
from tests.conftest import MakeChannels, StartRuntime
from tests.support.net import PYTHON, ROOT, free_port, port_open, service_env
from tests.test_client_retries import Scripted, serve


def settings(**env: str) -> ClientSettings:
    return ClientSettings(EnvReader(env))


def test_defaults_follow_the_platform_conventions() -> None:
    defaults = settings()
    assert defaults.retry.max_attempts == 3
    assert defaults.retry.initial_backoff == 0.05
    assert defaults.resilience.breaker is not None
    assert defaults.resilience.breaker.failure_rate == 0.5
    assert defaults.resilience.breaker.minimum_calls == 20
    assert defaults.resilience.bulkhead is not None
    assert defaults.resilience.bulkhead.max_concurrent == 64
    assert defaults.resilience.rate is None


def test_dependency_settings_override_the_global_ones() -> None:
    read = settings(
        CLIENT_RETRY_MAX_ATTEMPTS="4",
        CLIENT_ACCOUNTS_RETRY_MAX_ATTEMPTS="2",
        CLIENT_ACCOUNTS_BULKHEAD_MAX_CONCURRENT="8",
        CLIENT_PAYMENTS_RATE_LIMIT_RPS="50",
        CLIENT_PAYMENTS_BREAKER_ENABLED="false",
    )
    assert read.retry.max_attempts == 4
    retry, resilience = read.for_dependency("accounts")
    assert retry.max_attempts == 2
    assert resilience.bulkhead is not None
    assert resilience.bulkhead.max_concurrent == 8
    retry, resilience = read.for_dependency("payments")
    assert retry.max_attempts == 4  # inherited
    assert resilience.rate is not None
    assert (resilience.rate.per_second, resilience.rate.burst) == (50, 50)
    assert resilience.breaker is None


def test_method_overrides() -> None:
    read = settings(
        CLIENT_METHOD_OVERRIDES="grpcplatform.testing.v1.EchoService/Echo:deadline=0.3:max_attempts=1"
    )
    chain = ClientChain(settings=read)
    assert chain.deadline(ECHO_SERVICE_METHODS["Echo"], None) == pytest.approx(0.3)
    assert chain.deadline(ECHO_SERVICE_METHODS["Echo"], 2.0) == 2.0  # the caller's wins
    assert chain.deadline(ECHO_SERVICE_METHODS["Expand"], None) == 2.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLIENT_RETRY_MAX_ATTEMPTS": "many"}, "^CLIENT_RETRY_MAX_ATTEMPTS must be an integer"),
        (
            {"CLIENT_ACCOUNTS_BREAKER_FAILURE_RATE": "2"},
            "^CLIENT_ACCOUNTS_BREAKER_FAILURE_RATE must be a number from 0 to 1",
        ),
        (
            {"CLIENT_ACCOUNTS_RATE_LIMIT_RPS": "fast"},
            "^CLIENT_ACCOUNTS_RATE_LIMIT_RPS must be a number from 0 to [0-9]+, got 'fast'$",
        ),
        ({"CLIENT_METHOD_OVERRIDES": "Echo:deadline=1"}, "^CLIENT_METHOD_OVERRIDES entries"),
        ({"CLIENT_METHOD_OVERRIDES": "a.B/C:deadline=-1"}, "^CLIENT_METHOD_OVERRIDES entries"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises((ConfigError, SettingsError), match=message):
        settings(**env).for_dependency("accounts")


def test_bad_dependency_setting_stops_the_service_before_it_binds() -> None:
    grpc_port, admin_port = free_port(), free_port()
    env = service_env(
        "transfers", grpc_port, admin_port, CLIENT_ACCOUNTS_BULKHEAD_MAX_CONCURRENT="lots"
    )
    result = subprocess.run(
        [PYTHON, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: CLIENT_ACCOUNTS_BULKHEAD_MAX_CONCURRENT must be an integer "
        "from 1 to 2147483647, got 'lots'"
    ]
    assert not port_open(grpc_port)
    assert not port_open(admin_port)


async def test_dependency_bulkhead_from_the_environment_applies(
    start_runtime: StartRuntime, make_channels: MakeChannels
) -> None:
    servicer = Scripted(iter([]), delay=0.3)
    target = await serve(start_runtime, servicer)
    chain = ClientChain(settings=settings(CLIENT_SLOWPOKE_BULKHEAD_MAX_CONCURRENT="1"))
    client = EchoServiceClient(make_channels(chain=chain).connect(target, dependency="slowpoke"))
    first = asyncio.create_task(client.echo(pb.EchoRequest()))
    await asyncio.sleep(0.05)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.echo(pb.EchoRequest())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await first


def test_channel_settings_from_the_environment(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    read = EnvReader(
        {
            "CLIENT_TLS_ROOT_CA": str(ca),
            "CLIENT_MAX_MESSAGE_BYTES": "1048576",
            "CLIENT_LOAD_BALANCING": "pick_first",
        }
    )
    channel = ChannelSettings.from_env(read)
    assert channel.tls_root_ca == ca
    options = dict(channel.grpc_options())
    assert options["grpc.max_receive_message_length"] == 1048576
    assert "pick_first" in str(options["grpc.service_config"])
    assert ChannelSettings.from_env(EnvReader({})).tls_root_ca is None  # plaintext
    with pytest.raises(SettingsError, match=r"^CLIENT_TLS_ROOT_CA"):
        ChannelSettings.from_env(EnvReader({"CLIENT_TLS_ROOT_CA": str(tmp_path / "none.pem")}))
    with pytest.raises(SettingsError, match=r"^CLIENT_LOAD_BALANCING"):
        ChannelSettings.from_env(EnvReader({"CLIENT_LOAD_BALANCING": "random"}))
    for keepalive in ("CLIENT_KEEPALIVE_TIME_SECONDS", "CLIENT_KEEPALIVE_TIMEOUT_SECONDS"):
        with pytest.raises(SettingsError, match=rf"^{keepalive} must be at least 0.001 seconds"):
            ChannelSettings.from_env(EnvReader({keepalive: "0"}))  # grpc: pings without pause
