"""TLS and mTLS on the gRPC port (server.tls): real handshakes on loopback, certificates
rotated under a running server, and bad files refused at start-up."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import grpc
import pytest

from clients.chain import ClientChain
from clients.channel import ChannelFactory, ChannelSettings
from clients.settings import SettingsError
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from interceptors.retry import RetryPolicy
from server.application import RuntimeContext
from server.config import ConfigError, EnvReader, ServerConfig
from server.runtime import Runtime, process_registry
from tests.conftest import StartRuntime, TlsClient
from tests.support import echo
from tests.support.certs import Authority, Pair, SecretVolume
from tests.support.net import PYTHON, ROOT, free_port, port_open, service_env


def server_env(server: Pair, client_ca: Path | None = None) -> dict[str, str]:
    env = {"TLS_CERT_FILE": str(server.cert), "TLS_KEY_FILE": str(server.key)}
    if client_ca is not None:
        env["TLS_CLIENT_CA_FILE"] = str(client_ca)
    return env


async def code_of(client: EchoServiceClient, **metadata: str) -> grpc.StatusCode:
    try:
        await client.echo(pb.EchoRequest(message="hi"), metadata=tuple(metadata.items()), timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_mtls_admits_only_callers_with_a_certificate_of_the_ca(
    start_runtime: StartRuntime, tls_client: TlsClient, tmp_path: Path
) -> None:
    ca = Authority(tmp_path, "ledger-ca")
    stranger_ca = Authority(tmp_path, "other-ca")
    runtime = await start_runtime(echo.build, **server_env(ca.issue("echo", server=True), ca.cert))

    assert await code_of(tls_client(runtime, ca.cert, ca.issue("alice"))) is grpc.StatusCode.OK
    # No certificate, or one another CA signed: the handshake fails, no call is made.
    assert await code_of(tls_client(runtime, ca.cert)) is grpc.StatusCode.UNAVAILABLE
    outsider = stranger_ca.issue("mallory")
    assert await code_of(tls_client(runtime, ca.cert, outsider)) is grpc.StatusCode.UNAVAILABLE
    # A plaintext client gets nowhere either.
    assert await code_of(tls_client(runtime, None)) is grpc.StatusCode.UNAVAILABLE


async def test_tls_without_client_ca_serves_any_client_that_trusts_the_server(
    start_runtime: StartRuntime, tls_client: TlsClient, tmp_path: Path
) -> None:
    ca = Authority(tmp_path)
    runtime = await start_runtime(echo.build, **server_env(ca.issue("echo", server=True)))
    assert await code_of(tls_client(runtime, ca.cert)) is grpc.StatusCode.OK
    assert await code_of(tls_client(runtime, Authority(tmp_path, "other").cert)) is (
        grpc.StatusCode.UNAVAILABLE  # the server's certificate is not one it trusts
    )


async def test_a_rotated_certificate_is_served_to_new_connections_without_a_restart(
    start_runtime: StartRuntime,
    tls_client: TlsClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old_ca, new_ca = Authority(tmp_path, "old-ca"), Authority(tmp_path, "new-ca")
    volume = SecretVolume(tmp_path / "grpc-tls")
    volume.publish(old_ca.issue("echo", server=True))
    runtime = await start_runtime(echo.build, **server_env(volume.pair))
    kept = tls_client(runtime, old_ca.cert)
    assert await code_of(kept) is grpc.StatusCode.OK

    volume.publish(new_ca.issue("echo", server=True))  # renewed: the kubelet swaps the files
    assert await code_of(tls_client(runtime, new_ca.cert)) is grpc.StatusCode.OK
    assert await code_of(tls_client(runtime, old_ca.cert)) is grpc.StatusCode.UNAVAILABLE
    assert await code_of(kept) is grpc.StatusCode.OK  # an open connection keeps its session
    assert runtime.tls is not None
    assert runtime.tls.reloads == 1

    # A valid key of another certificate, then no key at all: the last good pair stays
    # served, with one warning per change of the files, not one per handshake.
    with caplog.at_level(logging.WARNING, logger="server.tls"):
        volume.pair.key.write_bytes(new_ca.issue("other").key.read_bytes())
        for _ in range(3):
            assert await code_of(tls_client(runtime, new_ca.cert)) is grpc.StatusCode.OK
        volume.pair.key.resolve().unlink()
        for _ in range(3):
            assert await code_of(tls_client(runtime, new_ca.cert)) is grpc.StatusCode.OK
    warnings = [r.getMessage() for r in caplog.records if "do not load" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert "does not load with TLS_CERT_FILE" in warnings[0]
    assert "TLS_KEY_FILE names no readable file" in warnings[1]
    assert runtime.tls.reloads == 1

    # The next good set is served: neither failure left the reload stuck.
    volume.publish(old_ca.issue("echo", server=True))
    assert await code_of(tls_client(runtime, old_ca.cert)) is grpc.StatusCode.OK
    assert runtime.tls.reloads == 2


async def test_files_that_broke_after_the_configuration_was_read_stop_start_up(
    tmp_path: Path,
) -> None:
    ca = Authority(tmp_path)
    server = ca.issue("echo", server=True)
    env = {"SERVICE": "echo", **server_env(server, ca.cert)}
    config = ServerConfig.from_env(env)  # checked here, fine
    channels = ChannelFactory()
    application = await echo.build(
        RuntimeContext(config, EnvReader(env), channels, process_registry())
    )
    server.key.write_bytes(ca.issue("other").key.read_bytes())  # then replaced by a wrong key
    with pytest.raises(ConfigError, match=r"^TLS_KEY_FILE does not load with TLS_CERT_FILE"):
        Runtime(config, application, channels)


async def test_the_queue_delay_probe_measures_through_its_loopback_listener(
    start_runtime: StartRuntime, tls_client: TlsClient, tmp_path: Path
) -> None:
    ca = Authority(tmp_path)
    runtime = await start_runtime(echo.build, **server_env(ca.issue("echo", server=True), ca.cert))
    assert runtime.probe_port not in (0, runtime.grpc_port)
    for _ in range(200):  # the probe checks every 0.1 s
        if runtime.queue_delay.delay > 0:
            break
        await asyncio.sleep(0.05)
    assert runtime.queue_delay.delay > 0
    assert await code_off_tls(runtime) is grpc.StatusCode.UNAUTHENTICATED


async def code_off_tls(runtime: Runtime) -> grpc.StatusCode:
    """What Echo answers through the probe's plaintext listener: chained methods must not."""
    plaintext = ChannelFactory(chain=ClientChain(retry=RetryPolicy(max_attempts=1)))
    try:
        return await code_of(
            EchoServiceClient(plaintext.connect(f"127.0.0.1:{runtime.probe_port}"))
        )
    finally:
        await plaintext.close()


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({"TLS_CERT_FILE": "{cert}"}, "TLS_KEY_FILE"),
        ({"TLS_KEY_FILE": "{key}"}, "TLS_CERT_FILE"),
        ({"TLS_CLIENT_CA_FILE": "{ca}"}, "TLS_CLIENT_CA_FILE"),
        ({"TLS_CERT_FILE": "{cert}", "TLS_KEY_FILE": "{missing}"}, "TLS_KEY_FILE"),
        ({"TLS_CERT_FILE": "{cert}", "TLS_KEY_FILE": "{other_key}"}, "TLS_KEY_FILE"),
        (
            {"TLS_CERT_FILE": "{cert}", "TLS_KEY_FILE": "{key}", "TLS_CLIENT_CA_FILE": "{key}"},
            "TLS_CLIENT_CA_FILE",
        ),
        ({"AUTHZ_RULES": "*=*"}, "AUTHZ_RULES"),
        ({"TLS_CERT_FILE": "{cert}", "TLS_KEY_FILE": "{key}", "AUTHZ_RULES": "*=*"}, "AUTHZ_RULES"),
    ],
)
def test_bad_tls_settings_name_their_variable(
    tmp_path: Path, settings: dict[str, str], variable: str
) -> None:
    ca = Authority(tmp_path)
    pair, other = ca.issue("echo", server=True), ca.issue("other")
    names = {
        "cert": pair.cert,
        "key": pair.key,
        "other_key": other.key,
        "ca": ca.cert,
        "missing": tmp_path / "missing.key",
    }
    env = {name: value.format(**names) for name, value in settings.items()}
    with pytest.raises(ConfigError, match=rf"^{variable} ") as caught:
        ServerConfig.from_env({"SERVICE": "accounts", **env})
    assert "\n" not in str(caught.value)


def test_a_rule_for_a_method_the_service_lacks_stops_the_process(tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    grpc_port, admin_port = free_port(), free_port()
    env = service_env(
        "tests.support.echo:build",
        grpc_port,
        admin_port,
        **server_env(ca.issue("echo", server=True), ca.cert),
        AUTHZ_RULES="grpcplatform.testing.v1.EchoService/Echo=alice,"
        "grpcplatform.testing.v1.EchoService/Ecoh=alice",
    )
    result = subprocess.run(
        [PYTHON, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        "configuration error: AUTHZ_RULES names methods this service does not serve: "
        "grpcplatform.testing.v1.EchoService/Ecoh"
    ), result.stderr
    assert not port_open(grpc_port)
    assert not port_open(admin_port)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"CLIENT_TLS_CERT": "{cert}"}, "CLIENT_TLS_KEY is required"),
        ({"CLIENT_TLS_CERT": "{cert}", "CLIENT_TLS_KEY": "{key}"}, "CLIENT_TLS_CERT needs"),
        (
            {"CLIENT_TLS_ROOT_CA": "{ca}", "CLIENT_TLS_CERT": "{cert}", "CLIENT_TLS_KEY": "{ca}"},
            "CLIENT_TLS_KEY does not load",
        ),
    ],
)
def test_bad_client_certificate_settings_name_their_variable(
    tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    ca = Authority(tmp_path)
    pair = ca.issue("alice")
    names = {"cert": pair.cert, "key": pair.key, "ca": ca.cert}
    env = {name: value.format(**names) for name, value in settings.items()}
    with pytest.raises(SettingsError, match=rf"^{message}"):
        ChannelSettings.from_env(EnvReader(env))
