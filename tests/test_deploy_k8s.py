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
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.application import load_factory
from services.transfers.events import build as build_events
from tests.support.moto import Moto
from tests.support.net import BIN, HOST, ROOT, free_port, poll, ready_status
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
        for probe, service in (
            ("readinessProbe", None),
            ("livenessProbe", "liveness"),
            ("startupProbe", "liveness"),
        ):
            grpc_probe = container.get(probe, {}).get("grpc")
            if not grpc_probe or grpc_probe.get("port") != 50051:
                problems.append(f"{name} has no gRPC {probe} on the gRPC port")
            elif grpc_probe.get("service") != service:
                problems.append(f"{name} {probe} asks the wrong health service")
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


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (lambda c: c.pop("readinessProbe"), "no gRPC readinessProbe"),
        (lambda c: c.pop("livenessProbe"), "no gRPC livenessProbe"),
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


def test_the_images_entrypoint_starts_the_server_and_answers_health(
    tmp_path: Path, shared_moto: Moto
) -> None:
    argv = dockerfile_argv()
    assert argv == ["grpc-platform", "accounts"]
    config = next(
        c["data"]
        for c in of_kind(objects("prod"), "ConfigMap")
        if c["metadata"]["name"] == "accounts-config"
    )
    grpc_port, admin_port = free_port(), free_port()
    env = {
        **{k: str(v) for k, v in config.items()},
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
    try:
        poll(lambda: (ready_status(admin_port) or (0,))[0] == 200, 30, "the entrypoint to serve")
        with grpc.insecure_channel(f"{HOST}:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "liveness", "ledger.v1.Accounts"):  # what the probes ask
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()


def test_prod_terminates_tls_at_the_nlb_with_http2_alpn() -> None:
    for service in of_kind(objects("prod"), "Service"):
        annotations = service["metadata"].get("annotations", {})
        if annotations.get("service.beta.kubernetes.io/aws-load-balancer-type") != "external":
            continue
        assert annotations["service.beta.kubernetes.io/aws-load-balancer-alpn-policy"] == (
            "HTTP2Preferred"
        )
        assert annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-ports"] == "grpc"
