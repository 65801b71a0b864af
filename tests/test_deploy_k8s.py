"""The container image and the Kubernetes manifests, validated offline by real tools.

No Docker engine and no cluster are reachable here: kustomize (kubectl) renders
every overlay, kubernetes-validate checks every object in strict mode against
Kubernetes 1.30, the invariants that matter are asserted on the rendered
objects (and shown to catch mutations), and the image's own entrypoint argv
is run against the installed package to show it serves and answers health.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interceptors.authorization import AuthorizationPolicy
from ledger.v1 import accounts_pb2, money_pb2
from ledger.v1.accounts_pb2_grpc import AccountsStub
from ledger.v1.accounts_platform import ACCOUNTS_METHODS
from server.application import load_factory
from server.config import EnvReader
from services.transfers.events import build as build_events
from tests.support.certs import Authority, Pair
from tests.support.moto import Moto
from tests.support.net import BIN, HOST, ROOT, free_port, http_get, poll, ready_status
from tests.test_deploy_terraform import role_actions

DEPLOY_BIN = ROOT / ".venv-deploy" / "bin"
OVERLAYS = ("dev", "prod")
K8S_VERSION = "1.30.0"
NLB_ANNOTATIONS = {
    "service.beta.kubernetes.io/aws-load-balancer-type": "external",
    "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
    "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal",
    "service.beta.kubernetes.io/aws-load-balancer-attributes": (
        "load_balancing.cross_zone.enabled=true"
    ),
}


def render(overlay: str) -> str:
    result = subprocess.run(
        [str(DEPLOY_BIN / "kubectl"), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def objects(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render(overlay)) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def seconds(value: str) -> float:
    return float(value)


def deployment_problems(
    deployment: dict[str, Any], config: dict[str, str], behind_nlb: bool = True
) -> list[str]:
    """What is wrong with a Deployment, by the rules the platform promises (a pod the
    NLB sends traffic to must outwait its deregistration before it stops)."""
    problems = []
    pod = deployment["spec"]["template"]["spec"]
    pod_security = pod.get("securityContext", {})
    if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("seccomp profile is not RuntimeDefault")
    for container in pod["containers"]:
        name = container["name"]
        security = {**pod_security, **container.get("securityContext", {})}
        if security.get("runAsNonRoot") is not True or security.get("runAsUser", 0) == 0:
            problems.append(f"{name} may run as root")
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name} has a writable root filesystem")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name} allows privilege escalation")
        if security.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{name} does not drop all capabilities")
        problems += probe_problems(container, serves_tls="TLS_CERT_FILE" in config)
        problems += tls_file_problems(pod, container, config)
        if "limits" not in container.get("resources", {}):
            problems.append(f"{name} has no resource limits")
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        sleep = float(pre_stop.get("command", ["sleep", "0"])[-1])
        drain = seconds(config["SHUTDOWN_DELAY_SECONDS"]) + seconds(
            config["SHUTDOWN_GRACE_SECONDS"]
        )
        args = container.get("args")
        if args == ["transfers-events"] or (
            args == ["transfers"] and config.get("EVENTS_CONSUMER", "true") != "false"
        ):
            drain += seconds(config.get("EVENTS_DRAIN_SECONDS", "10"))  # the feed consumer's
        if sleep + drain >= pod.get("terminationGracePeriodSeconds", 30):
            problems.append(f"{name}: preStop {sleep} + drain {drain} exceed the grace period")
        if behind_nlb and sleep < 30:
            problems.append(f"{name}: preStop shorter than the NLB deregistration delay (30 s)")
    return problems


def probe_problems(container: dict[str, Any], serves_tls: bool) -> list[str]:
    """kubelet's gRPC probes speak plaintext only: a TLS port is probed on the admin port."""
    problems, name = [], container["name"]
    for probe, service, path in (
        ("readinessProbe", None, "/ready"),
        ("livenessProbe", "liveness", "/health"),
        ("startupProbe", "liveness", "/health"),
    ):
        grpc_probe = container.get(probe, {}).get("grpc")
        http_probe = container.get(probe, {}).get("httpGet")
        if serves_tls:
            if grpc_probe or not http_probe or http_probe.get("port") != "admin":
                problems.append(f"{name} serves TLS but has no HTTP {probe} on the admin port")
            elif http_probe.get("path") != path:
                problems.append(f"{name} {probe} asks the wrong path")
        elif not grpc_probe or grpc_probe.get("port") != 50051:
            problems.append(f"{name} has no gRPC {probe} on the gRPC port")
        elif grpc_probe.get("service") != service:
            problems.append(f"{name} {probe} asks the wrong health service")
    return problems


TLS_FILE_SETTINGS = {  # each setting, and the key of cert-manager's Secret it must name
    "TLS_CERT_FILE": "tls.crt",
    "TLS_KEY_FILE": "tls.key",
    "TLS_CLIENT_CA_FILE": "ca.crt",
    "CLIENT_TLS_ROOT_CA": "ca.crt",
    "CLIENT_TLS_CERT": "tls.crt",
    "CLIENT_TLS_KEY": "tls.key",
}


def tls_file_problems(
    pod: dict[str, Any], container: dict[str, Any], config: dict[str, str]
) -> list[str]:
    """Every TLS file setting names a key of a Secret mounted read-only as a directory
    (a subPath mount is never updated, so a renewal would not reach the process)."""
    secrets = {
        v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v
    }
    mounts = {
        m["mountPath"]: m
        for m in container.get("volumeMounts", [])
        if m["name"] in secrets and "subPath" not in m and m.get("readOnly") is True
    }
    problems = []
    for setting, expected_key in TLS_FILE_SETTINGS.items():
        path = config.get(setting)
        if path is None:
            continue
        directory, _, key = path.rpartition("/")
        if directory not in mounts or key != expected_key:
            problems.append(f"{container['name']}: {setting} is not a key of a mounted Secret")
    return problems


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, objects(request.param)


# Custom resources: no schema ships with kubernetes-validate, so
# tests/test_deploy_observability.py checks their structure instead.
CUSTOM_KINDS = {
    "VerticalPodAutoscaler",
    "ServiceMonitor",
    "PrometheusRule",
    "ScaledObject",
    "TriggerAuthentication",
    "Certificate",
    "Issuer",
}


def test_every_overlay_renders_and_validates_strictly(tmp_path: Path) -> None:
    for overlay in OVERLAYS:
        manifest = tmp_path / f"{overlay}.yaml"
        built_in = [doc for doc in objects(overlay) if doc["kind"] not in CUSTOM_KINDS]
        assert len(built_in) >= 16
        manifest.write_text(yaml.safe_dump_all(built_in))
        result = subprocess.run(
            [str(DEPLOY_BIN / "kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(manifest)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "passed" in result.stdout + result.stderr


def test_deployments_keep_the_platform_promises(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    configs = {c["metadata"]["name"]: c["data"] for c in of_kind(docs, "ConfigMap")}
    deployments = of_kind(docs, "Deployment")
    names = {d["metadata"]["name"] for d in deployments}
    assert names == {"accounts", "transfers", "transfers-events"}
    for deployment in deployments:
        config = configs[f"{deployment['metadata']['name']}-config"]
        behind_nlb = bool(load_balancers_of(docs, deployment))
        assert deployment_problems(deployment, config, behind_nlb) == []


def test_the_overlay_creates_its_namespace_enforcing_restricted_pods(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """`kubectl apply -k` on a fresh cluster needs no namespace made by hand, and the
    cluster refuses a pod that breaks the restricted profile (the promises above)."""
    overlay, docs = rendered
    (namespace,) = of_kind(docs, "Namespace")
    name = namespace["metadata"]["name"]
    namespaced = [doc for doc in docs if doc["kind"] != "Namespace"]
    assert {doc["metadata"].get("namespace") for doc in namespaced} == {name}, overlay
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def named(doc: dict[str, Any], name: str) -> bool:
    return bool(doc["metadata"]["name"] == name)


def load_balancers_of(docs: list[dict[str, Any]], deployment: dict[str, Any]) -> list[str]:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return [
        s["metadata"]["name"]
        for s in of_kind(docs, "Service")
        if s["spec"].get("type") == "LoadBalancer"
        and s["spec"]["selector"].items() <= labels.items()
    ]


def test_the_feed_consumer_runs_apart_with_a_role_of_its_own() -> None:
    docs = objects("prod")
    configs = {c["metadata"]["name"]: c["data"] for c in of_kind(docs, "ConfigMap")}
    assert configs["transfers-config"]["EVENTS_CONSUMER"] == "false"
    (events,) = [d for d in of_kind(docs, "Deployment") if named(d, "transfers-events")]
    pod = events["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["transfers-events"]
    assert load_factory("transfers-events") is build_events  # the entry point is installed
    assert load_balancers_of(docs, events) == []  # no client traffic
    (account,) = [a for a in of_kind(docs, "ServiceAccount") if named(a, pod["serviceAccountName"])]
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role.endswith("/ledger-transfers-events")


def test_services_are_behind_an_internal_nlb_and_a_headless_service(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    for name in ("accounts", "transfers"):
        nlb = services[name]
        assert nlb["spec"]["type"] == "LoadBalancer"
        annotations = nlb["metadata"]["annotations"]
        assert NLB_ANNOTATIONS.items() <= annotations.items()
        attributes = annotations[
            "service.beta.kubernetes.io/aws-load-balancer-target-group-attributes"
        ]
        assert "deregistration_delay.timeout_seconds=30" in attributes
        assert "deregistration_delay.connection_termination.enabled=true" in attributes
        assert services[f"{name}-headless"]["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_by_digest(overlay: str) -> None:
    for deployment in of_kind(objects(overlay), "Deployment"):
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert re.fullmatch(r".+@sha256:[0-9a-f]{64}", image), image


def test_the_dev_overlay_patches_only_the_services_settings() -> None:
    configs = {c["metadata"]["name"]: c["data"] for c in of_kind(objects("dev"), "ConfigMap")}
    assert set(configs["ledger-grafana-dashboard"]) == {"ledger-grpc.json"}
    for name in ("accounts-config", "transfers-config", "transfers-events-config"):
        assert configs[name]["LEDGER_NAME"] == "ledger-dev"
        assert configs[name]["LOG_LEVEL"] == "DEBUG"


def test_transfers_reaches_accounts_through_the_headless_service() -> None:
    configs = {c["metadata"]["name"]: c["data"] for c in of_kind(objects("prod"), "ConfigMap")}
    assert configs["transfers-config"]["ACCOUNTS_TARGET"] == "dns:///accounts-headless:50051"


def tls_mount(container: dict[str, Any]) -> dict[str, Any]:
    return next(m for m in container["volumeMounts"] if m["name"] == "grpc-tls")


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (lambda c: c.pop("readinessProbe"), "no HTTP readinessProbe"),
        (lambda c: c.update(livenessProbe={"grpc": {"port": 50051}}), "no HTTP livenessProbe"),
        (
            lambda c: c.update(
                volumeMounts=[m for m in c["volumeMounts"] if m["name"] != "grpc-tls"]
            ),
            "TLS_CERT_FILE is not a key of a mounted Secret",
        ),
        (lambda c: tls_mount(c).update(subPath="tls.crt"), "is not a key of a mounted Secret"),
        (lambda c: c["securityContext"].update(runAsUser=0), "may run as root"),
        (lambda c: c["securityContext"].update(readOnlyRootFilesystem=False), "writable root"),
        (lambda c: c["lifecycle"]["preStop"]["exec"].update(command=["sleep", "45"]), "exceed"),
    ],
)
def test_the_checks_catch_mutations(mutation: Any, expected: str) -> None:
    docs = objects("prod")
    config = next(
        c["data"] for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"] == "accounts-config"
    )
    deployment = copy.deepcopy(
        next(d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "accounts")
    )
    mutation(deployment["spec"]["template"]["spec"]["containers"][0])
    assert any(expected in problem for problem in deployment_problems(deployment, config))


def test_the_consumer_scales_on_its_own_queue_with_its_own_role(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    configs = {c["metadata"]["name"]: c["data"] for c in of_kind(docs, "ConfigMap")}
    (scaled,) = of_kind(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "transfers-events"
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    ledger = configs["transfers-events-config"]["LEDGER_NAME"]
    assert trigger["metadata"]["queueURL"].endswith(f"/{ledger}-events")  # the one it reads
    assert int(trigger["metadata"]["queueLength"]) > 0
    (auth,) = [
        a
        for a in of_kind(docs, "TriggerAuthentication")
        if named(a, trigger["authenticationRef"]["name"])
    ]
    # KEDA reads the depth with the workload's role, which may.
    assert auth["spec"]["podIdentity"] == {"provider": "aws", "identityOwner": "workload"}
    assert "sqs:GetQueueAttributes" in role_actions("transfers_events_role")


def test_the_consumers_drain_counts_in_its_grace_period() -> None:
    docs = objects("prod")
    configs = {c["metadata"]["name"]: c["data"] for c in of_kind(docs, "ConfigMap")}
    config = configs["transfers-events-config"]
    (events,) = [d for d in of_kind(docs, "Deployment") if named(d, "transfers-events")]
    assert deployment_problems(events, config, behind_nlb=False) == []
    longer = {**config, "EVENTS_DRAIN_SECONDS": "30"}
    assert any("exceed" in p for p in deployment_problems(events, longer, behind_nlb=False))


def dockerfile_argv() -> list[str]:
    """ENTRYPOINT + CMD of the Dockerfile, which must be in exec (JSON) form."""
    text = (ROOT / "Dockerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    command = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert entrypoint, "ENTRYPOINT is not in exec form"
    assert command, "CMD is not in exec form"
    return [*json.loads(entrypoint.group(1)), *json.loads(command.group(1))]


def mount_like_cert_manager(directory: Path) -> Authority:
    """The files cert-manager's Secret holds (tls.crt, tls.key, ca.crt), for Accounts."""
    directory.mkdir()
    ca = Authority(directory.parent, "ledger-ca")
    ca.issue("accounts", server=True, into=Pair(directory / "tls.crt", directory / "tls.key"))
    (directory / "ca.crt").write_bytes(ca.cert.read_bytes())
    return ca


def test_the_images_entrypoint_serves_the_prod_settings_over_mtls(
    tmp_path: Path, shared_moto: Moto
) -> None:
    """The Dockerfile's argv with prod's rendered ConfigMap (its TLS files laid out as the
    mounted Secret), called as the probes and as Transfers and another caller would."""
    argv = dockerfile_argv()
    assert argv == ["grpc-platform", "accounts"]
    config = next(
        c["data"]
        for c in of_kind(objects("prod"), "ConfigMap")
        if c["metadata"]["name"] == "accounts-config"
    )
    mount = tmp_path / "grpc-tls"
    ca = mount_like_cert_manager(mount)
    grpc_port, admin_port = free_port(), free_port()
    env = {
        **{k: str(v).replace("/etc/grpc-tls", str(mount)) for k, v in config.items()},
        "GRPC_HOST": HOST,
        "GRPC_PORT": str(grpc_port),
        "ADMIN_HOST": HOST,
        "ADMIN_PORT": str(admin_port),
        "PATH": str(BIN),
        "PYTHONDONTWRITEBYTECODE": "1",
        # AWS is moto here, and empty: the service creates what Terraform would have.
        **{k: v for k, v in shared_moto.ledger_env().items() if k != "LEDGER_NAME"},
    }
    log = (tmp_path / "entrypoint.log").open("wb")
    process = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], env=env, stderr=log, cwd=tmp_path)

    def channel_as(identity: str) -> grpc.Channel:
        pair = ca.issue(identity)
        credentials = grpc.ssl_channel_credentials(
            ca.cert.read_bytes(), pair.key.read_bytes(), pair.cert.read_bytes()
        )
        return grpc.secure_channel(f"{HOST}:{grpc_port}", credentials)

    withdraw = accounts_pb2.WithdrawRequest(
        request_id="entrypoint-w1",
        account_id="00000000-0000-4000-8000-000000000000",
        amount=money_pb2.Money(currency_code="EUR", minor_units=1),
    )
    try:
        poll(lambda: (ready_status(admin_port) or (0,))[0] == 200, 30, "the entrypoint to serve")
        assert http_get(f"http://{HOST}:{admin_port}/health")[0] == 200  # the liveness probe
        with channel_as("transfers") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "liveness", "ledger.v1.Accounts"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as missing:
                AccountsStub(channel).Withdraw(withdraw, timeout=10)
            assert missing.value.code() is grpc.StatusCode.NOT_FOUND  # let through
        with channel_as("reporting") as channel:
            with pytest.raises(grpc.RpcError) as denied:
                AccountsStub(channel).Withdraw(withdraw, timeout=10)
            assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with grpc.insecure_channel(f"{HOST}:{grpc_port}") as plaintext:
            with pytest.raises(grpc.RpcError) as refused:
                health_pb2_grpc.HealthStub(plaintext).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()


def certificate_of(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    """The cert-manager Certificate whose Secret the Deployment mounts for its TLS files."""
    (pod_deployment,) = [d for d in of_kind(docs, "Deployment") if named(d, deployment)]
    volumes = pod_deployment["spec"]["template"]["spec"]["volumes"]
    (secret,) = [v["secret"]["secretName"] for v in volumes if v["name"] == "grpc-tls"]
    (certificate,) = [c for c in of_kind(docs, "Certificate") if c["spec"]["secretName"] == secret]
    return certificate


def test_callers_prove_who_they_are_and_only_transfers_moves_money(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    configs = {c["metadata"]["name"]: c["data"] for c in of_kind(docs, "ConfigMap")}
    issuers = {i["metadata"]["name"]: i for i in of_kind(docs, "Issuer")}
    accounts, transfers = certificate_of(docs, "accounts"), certificate_of(docs, "transfers")
    # One CA for both, whose key survives its renewal: each side trusts the CA
    # certificate in its own Secret, and the two Secrets are renewed apart.
    assert accounts["spec"]["issuerRef"] == transfers["spec"]["issuerRef"]
    for certificate in (accounts, transfers):
        issuer = issuers[certificate["spec"]["issuerRef"]["name"]]
        (ca,) = [  # the issuer signs with a CA certificate cert-manager keeps
            c
            for c in of_kind(docs, "Certificate")
            if c["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]
        ]
        assert ca["spec"]["isCA"] is True
        assert ca["spec"]["privateKey"]["rotationPolicy"] == "Never"
        assert "server auth" in certificate["spec"]["usages"]
        assert configs[f"{certificate['metadata']['labels']['app.kubernetes.io/name']}-config"][
            "TLS_CLIENT_CA_FILE"
        ].endswith("/ca.crt")

    # Accounts: its rules name only its own methods, and only Transfers' identity
    # (its certificate's common name) may withdraw, deposit or release a hold.
    rules = AuthorizationPolicy.parse(EnvReader(configs["accounts-config"]).names("AUTHZ_RULES"))
    assert rules.unmatched(p.full_method for p in ACCOUNTS_METHODS.values()) == []
    identity = transfers["spec"]["commonName"]
    for method in ("Withdraw", "Deposit", "ReleaseHold"):
        assert rules.callers_for(f"/ledger.v1.Accounts/{method}") == frozenset({identity})
    assert rules.callers_for("/ledger.v1.Accounts/GetAccount") is None  # any caller of the CA

    # Transfers presents that certificate to Accounts, under the name it dials.
    transfers_config = configs["transfers-config"]
    assert transfers_config["CLIENT_TLS_CERT"] == transfers_config["TLS_CERT_FILE"]
    assert "client auth" in transfers["spec"]["usages"]
    host = transfers_config["ACCOUNTS_TARGET"].removeprefix("dns:///").rpartition(":")[0]
    assert host in accounts["spec"]["dnsNames"]


def test_the_nlb_passes_tls_through_to_pods_that_serve_it(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """A client certificate cannot cross a TLS termination: no NLB of a pod that asks for
    one may terminate TLS itself."""
    _, docs = rendered
    configs = {c["metadata"]["name"]: c["data"] for c in of_kind(docs, "ConfigMap")}
    balanced = [d for d in of_kind(docs, "Deployment") if load_balancers_of(docs, d)]
    assert {d["metadata"]["name"] for d in balanced} == {"accounts", "transfers"}
    for deployment in balanced:
        config = configs[f"{deployment['metadata']['name']}-config"]
        for name in load_balancers_of(docs, deployment):
            (service,) = [s for s in of_kind(docs, "Service") if named(s, name)]
            annotations = service["metadata"]["annotations"]
            assert "TLS_CLIENT_CA_FILE" in config
            assert "service.beta.kubernetes.io/aws-load-balancer-ssl-cert" not in annotations


def test_the_nlb_tls_component_terminates_tls_with_http2_alpn(tmp_path: Path) -> None:
    """The alternative for clusters without cert-manager: TLS at the NLB, no caller identity."""
    overlay = tmp_path / "nlb-tls"
    overlay.mkdir()
    k8s = Path(os.path.relpath(ROOT / "k8s", overlay))  # kustomize takes relative paths only
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(k8s / "base" / "accounts"), str(k8s / "base" / "transfers")],
                "components": [str(k8s / "components" / "nlb-tls")],
            }
        )
    )
    result = subprocess.run(
        [str(DEPLOY_BIN / "kubectl"), "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    balancers = [
        s
        for s in of_kind(docs, "Service")
        if s["metadata"]
        .get("annotations", {})
        .get("service.beta.kubernetes.io/aws-load-balancer-type")
        == "external"
    ]
    assert len(balancers) == 2
    for service in balancers:
        annotations = service["metadata"]["annotations"]
        assert annotations["service.beta.kubernetes.io/aws-load-balancer-alpn-policy"] == (
            "HTTP2Preferred"
        )
        assert annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-ports"] == "grpc"
