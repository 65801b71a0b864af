"""Caller identity from mTLS and per-method authorization (interceptors.authorization):
the rules as pure logic, then real calls with real certificates on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import subprocess
from pathlib import Path

import grpc
import psutil
import pytest
from cryptography import x509
from google.rpc import error_details_pb2 as details_pb2

from clients.chain import ClientChain
from clients.channel import ChannelFactory, ChannelSettings
from clients.errors import details_of, error_info
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from interceptors.authorization import AuthorizationPolicy, PolicyError
from interceptors.retry import RetryPolicy
from ledger.v1 import accounts_pb2, transfers_pb2
from ledger.v1.accounts_platform import AccountsClient
from ledger.v1.transfers_platform import TransfersClient
from server.queue_probe import loopback_of
from tests.conftest import StartRuntime, TlsClient
from tests.support import echo
from tests.support.certs import Authority, Pair
from tests.support.moto import Moto
from tests.support.net import BIN, running_service
from tests.test_ledger_dynamo import Ledger, eur, failure, rid
from tests.test_metrics import scrape, value
from tests.test_tls import code_of, code_off_tls, server_env

ECHO_SERVICE = "grpcplatform.testing.v1.EchoService"
TRANSFERS_ID = "spiffe://ledger.test/ns/ledger/sa/transfers"
OTHER = "spiffe://ledger.test/ns/ledger/sa/mallory"
RULES = f"{ECHO_SERVICE}/Echo=alice|{TRANSFERS_ID},{ECHO_SERVICE}/*=ops"


# -- the rules ---------------------------------------------------------------------------


def test_the_most_specific_pattern_decides_and_unmatched_methods_are_denied() -> None:
    policy = AuthorizationPolicy.parse(
        ["a.v1.S/Get=alice|bob", "a.v1.S/*=ops", "b.v1.T/*=*", " /c.v1.U/Put = carol "]
    )
    assert policy.callers_for("/a.v1.S/Get") == frozenset({"alice", "bob"})
    assert policy.callers_for("/a.v1.S/Put") == frozenset({"ops"})
    assert policy.callers_for("/b.v1.T/Any") is None  # any authenticated caller
    assert policy.callers_for("/c.v1.U/Put") == frozenset({"carol"})
    assert policy.callers_for("/c.v1.U/Get") == frozenset()  # no rule: nobody
    assert AuthorizationPolicy.parse(["a.v1.S/Get=x", "*=ops"]).callers_for(
        "/z.v1.Z/Q"
    ) == frozenset({"ops"})
    assert AuthorizationPolicy.parse([]).callers_for("/a.v1.S/Get") is None  # no rules at all


def test_rules_naming_no_served_method_are_reported() -> None:
    policy = AuthorizationPolicy.parse(["a.v1.S/Get=x", "a.v1.S/Gte=x", "b.v1.T/*=x", "*=x"])
    assert policy.unmatched(["/a.v1.S/Get", "/a.v1.S/Put"]) == ["a.v1.S/Gte", "b.v1.T/*"]


@pytest.mark.parametrize(
    "entry",
    ["a.v1.S/Get", "a.v1.S/Get=", "a.v1.S=alice", "/=alice", "a.v1.S/Get/x=alice", "a.v1.S/=x"],
)
def test_malformed_rules_are_refused(entry: str) -> None:
    with pytest.raises(PolicyError, match=r"^AUTHZ_RULES entries must look like"):
        AuthorizationPolicy.parse([entry])


def test_a_pattern_given_twice_is_refused() -> None:
    with pytest.raises(PolicyError):
        AuthorizationPolicy.parse(["a.v1.S/Get=alice", "a.v1.S/Get=bob"])


# -- real calls ----------------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path, "ledger-ca")


async def expand_code(client: EchoServiceClient) -> grpc.StatusCode:
    try:
        async for _ in client.expand(pb.ExpandRequest(message="hi", count=2), timeout=5):
            pass
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_each_method_admits_exactly_the_callers_its_rule_names(
    start_runtime: StartRuntime,
    tls_client: TlsClient,
    ca: Authority,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = await start_runtime(
        echo.build,
        **server_env(ca.issue("echo", server=True), ca.cert),
        AUTHZ_RULES=RULES,
        LOG_CALLS="ALL",
    )
    alice, ops = (
        tls_client(runtime, ca.cert, ca.issue("alice")),
        tls_client(runtime, ca.cert, ca.issue("ops")),
    )
    # Common name "ops", but a SPIFFE ID: the SPIFFE ID is who it is (Expand, which "ops"
    # may call, is denied to it below).
    svid = Pair(ca.directory / "svid.crt", ca.directory / "svid.key")
    transfers = tls_client(runtime, ca.cert, ca.issue("ops", spiffe_id=TRANSFERS_ID, into=svid))
    ok, denied = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED

    with caplog.at_level(logging.INFO, logger="grpc.access"):
        assert [await code_of(c) for c in (alice, ops, transfers)] == [ok, denied, ok]
    callers = [getattr(r, "caller", None) for r in caplog.records if r.name == "grpc.access"]
    assert callers == ["alice", "ops", TRANSFERS_ID]
    assert [await expand_code(c) for c in (alice, ops, transfers)] == [denied, ok, denied]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ops.echo(pb.EchoRequest(message="hi"))
    info = error_info(caught.value)
    assert info is not None
    assert info.reason == "CALLER_NOT_ALLOWED"
    assert dict(info.metadata) == {"caller": "ops", "method": f"/{ECHO_SERVICE}/Echo"}
    assert [type(d) for d in details_of(caught.value)] == [details_pb2.ErrorInfo]

    samples = await asyncio.to_thread(scrape, runtime.admin.port)
    labels = {"grpc_service": ECHO_SERVICE, "grpc_type": "unary", "grpc_method": "Echo"}
    handled = "grpc_server_handled_total"
    assert value(samples, handled, **labels, grpc_code="PermissionDenied") == 2
    assert value(samples, handled, **labels, grpc_code="OK") == 2


@pytest.mark.parametrize(
    ("common_name", "names", "expected"),
    [
        # A SPIFFE ID anywhere but in the one URI SAN proves nothing of it.
        ("mallory", [x509.DNSName(TRANSFERS_ID)], grpc.StatusCode.PERMISSION_DENIED),
        ("mallory", [x509.RFC822Name(TRANSFERS_ID)], grpc.StatusCode.PERMISSION_DENIED),
        (TRANSFERS_ID, [], grpc.StatusCode.UNAUTHENTICATED),
        (
            "alice",  # two SPIFFE IDs make none, and the common name does not stand in
            [x509.UniformResourceIdentifier(TRANSFERS_ID), x509.UniformResourceIdentifier(OTHER)],
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        ("alice", [x509.UniformResourceIdentifier(OTHER)], grpc.StatusCode.PERMISSION_DENIED),
        ("mallory", [x509.UniformResourceIdentifier(TRANSFERS_ID)], grpc.StatusCode.OK),
    ],
)
async def test_an_identity_is_claimed_only_where_it_can_be_proven(
    start_runtime: StartRuntime,
    tls_client: TlsClient,
    ca: Authority,
    common_name: str,
    names: list[x509.GeneralName],
    expected: grpc.StatusCode,
) -> None:
    runtime = await start_runtime(
        echo.build, **server_env(ca.issue("echo", server=True), ca.cert), AUTHZ_RULES=RULES
    )
    pair = Pair(ca.directory / "claim.crt", ca.directory / "claim.key")
    client = tls_client(runtime, ca.cert, ca.issue(common_name, names=names, into=pair))
    assert await code_of(client) is expected


async def test_with_tls_only_no_method_answers_off_tls(
    start_runtime: StartRuntime, tls_client: TlsClient, ca: Authority
) -> None:
    """No client certificates asked, so no identity: still, the probe's plaintext listener
    must not become a way around TLS, nor listen where GRPC_HOST does."""
    runtime = await start_runtime(
        echo.build, **server_env(ca.issue("echo", server=True)), GRPC_HOST=interface_address()
    )
    (listener,) = [
        c.laddr
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == runtime.probe_port
    ]
    address = ipaddress.ip_address(listener.ip)  # grpc binds IPv6 sockets, v4 mapped
    assert (getattr(address, "ipv4_mapped", None) or address).is_loopback  # not every interface
    assert await code_off_tls(runtime) is grpc.StatusCode.UNAUTHENTICATED


def interface_address() -> str:
    """An IPv4 address of this machine that is not loopback (0.0.0.0 if it has none)."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    return "0.0.0.0"


def test_the_probe_listener_is_on_the_loopback_of_the_listeners_family() -> None:
    assert loopback_of("0.0.0.0") == loopback_of("10.1.2.3") == "127.0.0.1"
    assert loopback_of("::") == loopback_of("fd00::5") == "::1"


async def test_the_rate_limit_counts_the_proven_identity_not_the_declared_one(
    start_runtime: StartRuntime,
    tls_client: TlsClient,
    ca: Authority,
) -> None:
    runtime = await start_runtime(
        echo.build,
        **server_env(ca.issue("echo", server=True), ca.cert),
        RATE_LIMIT_RPS="0.1",
        RATE_LIMIT_BURST="2",
    )
    alice, bob = (
        tls_client(runtime, ca.cert, ca.issue("alice")),
        tls_client(runtime, ca.cert, ca.issue("bob")),
    )
    # A fresh x-client-id per call would be a fresh bucket per call without mTLS.
    codes = [await code_of(alice, **{"x-client-id": f"alice-{n}"}) for n in range(4)]
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    assert codes == [grpc.StatusCode.OK, grpc.StatusCode.OK, exhausted, exhausted]
    assert await code_of(bob) is grpc.StatusCode.OK  # a bucket of its own

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await alice.echo(pb.EchoRequest(message="hi"))
    quota = [d for d in details_of(caught.value) if isinstance(d, details_pb2.QuotaFailure)]
    assert quota[0].violations[0].subject == "id:alice"


def test_grpcurl_calls_with_a_client_certificate_and_prints_a_denial(
    ca: Authority, tmp_path: Path
) -> None:
    settings = {**server_env(ca.issue("echo", server=True), ca.cert), "AUTHZ_RULES": RULES}
    alice, ops = ca.issue("alice"), ca.issue("ops")
    with running_service("tests.support.echo:build", tmp_path, settings) as service:

        def grpcurl(pair: Pair | None, method: str) -> subprocess.CompletedProcess[str]:
            identity = ["-cert", str(pair.cert), "-key", str(pair.key)] if pair else []
            command = [str(BIN / "grpcurl"), "-cacert", str(ca.cert), *identity]
            command += ["-format-error", "-d", '{"message": "hi"}', service.target, method]
            return subprocess.run(command, capture_output=True, text=True, timeout=30)

        allowed = grpcurl(alice, f"{ECHO_SERVICE}/Echo")
        assert allowed.returncode == 0, allowed.stderr
        assert json.loads(allowed.stdout)["message"] == "hi"

        denied = grpcurl(ops, f"{ECHO_SERVICE}/Echo")
        assert denied.returncode != 0
        status = json.loads(denied.stderr)
        assert status["code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]
        (info,) = status["details"]
        assert info["reason"] == "CALLER_NOT_ALLOWED"
        assert info["metadata"] == {"caller": "ops", "method": f"/{ECHO_SERVICE}/Echo"}

        anonymous = grpcurl(None, f"{ECHO_SERVICE}/Echo")
        assert anonymous.returncode != 0
        assert "Echo" not in anonymous.stdout


async def test_the_ledger_moves_money_over_mtls_and_only_through_transfers(
    ca: Authority, tmp_path: Path, shared_moto: Moto
) -> None:
    """Accounts and Transfers as processes, with the prod overlay's rules (plus a `seed`
    identity that may deposit the test's starting money): Transfers calls Accounts with
    its own certificate, and no other caller can withdraw."""
    ledger = shared_moto.ledger_env()
    rules = "ledger.v1.Accounts/Withdraw=transfers,ledger.v1.Accounts/Deposit=transfers|seed,"
    accounts_env = {
        **ledger,
        **server_env(ca.issue("accounts", server=True), ca.cert),
        "AUTHZ_RULES": rules + "ledger.v1.Accounts/*=*",
    }
    transfers_pair = ca.issue("transfers", server=True, client=True)
    with running_service("accounts", tmp_path, accounts_env) as accounts_process:
        transfers_env = {
            **ledger,
            **server_env(transfers_pair, ca.cert),
            "ACCOUNTS_TARGET": accounts_process.target,
            "CLIENT_TLS_ROOT_CA": str(ca.cert),
            "CLIENT_TLS_CERT": str(transfers_pair.cert),
            "CLIENT_TLS_KEY": str(transfers_pair.key),
        }
        with running_service("transfers", tmp_path, transfers_env) as transfers_process:
            factories = {
                name: ChannelFactory(
                    ChannelSettings(tls_root_ca=ca.cert, tls_cert=pair.cert, tls_key=pair.key),
                    ClientChain(retry=RetryPolicy(max_attempts=1)),
                )
                for name, pair in (("seed", ca.issue("seed")), ("teller", ca.issue("teller")))
            }
            try:
                seeded = Ledger(
                    AccountsClient(factories["seed"].connect(accounts_process.target)),
                    TransfersClient(factories["seed"].connect(transfers_process.target)),
                )
                source, destination = await seeded.open(balance=100), await seeded.open()
                teller = AccountsClient(factories["teller"].connect(accounts_process.target))
                refused = await failure(
                    teller.withdraw(
                        accounts_pb2.WithdrawRequest(
                            request_id=rid(), account_id=source, amount=eur(10)
                        )
                    )
                )
                assert refused.code() is grpc.StatusCode.PERMISSION_DENIED
                transfers = TransfersClient(factories["teller"].connect(transfers_process.target))
                done = await transfers.create_transfer(
                    seeded.transfer_request(source, destination, 30)
                )
                assert done.transfer.state == transfers_pb2.TRANSFER_STATE_COMPLETED
                assert (await seeded.balance(source), await seeded.balance(destination)) == (70, 30)
            finally:
                for factory in factories.values():
                    await factory.close()
    callers = {
        json.loads(line).get("caller")
        for line in accounts_process.stderr().splitlines()
        if line.startswith("{") and '"grpc call"' in line
    }
    assert callers == {"teller"}  # the denial; Transfers' calls succeeded (not logged)
