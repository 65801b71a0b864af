"""Observability objects: the alerts, the dashboard, the HPA's adapter rule and the
scrape config name series the platform really exports, and are well formed."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from clients.aws import AwsBreakerStates, AwsClients, AwsSettings
from clients.chain import ClientChain
from durable.consumer import Delivery, SqsConsumer
from durable.saga import SagaEngine
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from interceptors.metrics import RpcMetrics
from tests.conftest import MakeChannels, StartRuntime
from tests.support import echo
from tests.support.net import HOST, ROOT, http_get
from tests.test_deploy_k8s import objects, of_kind

OBSERVABILITY = ROOT / "k8s" / "base" / "observability"
PROMQL_NAME = re.compile(r"\b((?:grpc|platform)_[a-z_]+)\b")
LABELS = {"grpc_code", "grpc_method", "grpc_service", "grpc_type"}  # not series names


def rule_expressions(docs: list[dict[str, Any]]) -> dict[str, str]:
    (rule,) = of_kind(docs, "PrometheusRule")
    return {
        entry["alert"]: entry["expr"]
        for group in rule["spec"]["groups"]
        for entry in group["rules"]
    }


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def adapter_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load(
        (ROOT / "k8s" / "observability" / "prometheus-adapter-rules.yaml").read_text()
    )
    rules: list[dict[str, Any]] = values["rules"]["custom"]
    return rules


class Unused:
    """A publisher and a handler for pieces whose metrics are read but that never run."""

    async def publish(self, event: Mapping[str, Any], context: Mapping[str, str]) -> None:
        raise AssertionError("not run")

    async def handle(self, delivery: Delivery) -> None:
        raise AssertionError("not run")


async def exported_series(start_runtime: StartRuntime, make_channels: MakeChannels) -> set[str]:
    """Every series name on a real /metrics, with a client chain and AWS clients (opened,
    never called) on the same registry."""
    runtime = await start_runtime(echo.build)
    chain = ClientChain(metrics=RpcMetrics(runtime.registry, "client"))
    client = EchoServiceClient(make_channels(chain=chain).connect(f"127.0.0.1:{runtime.grpc_port}"))
    await client.echo(pb.EchoRequest(message="x"))
    aws = AwsClients(AwsSettings(endpoint_url=f"http://{HOST}:9"))
    AwsBreakerStates(runtime.registry, aws)
    # The ledger's own series, registered as its Transfers service does (never run here).
    SagaEngine(None, "sagas", [], Unused(), registry=runtime.registry)
    SqsConsumer(None, "http://sqs/events", Unused().handle, registry=runtime.registry)
    await aws.client("sqs")
    try:
        _, body = await asyncio.to_thread(http_get, f"http://{HOST}:{runtime.admin.port}/metrics")
    finally:
        await aws.close()
    names: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


async def test_every_series_named_is_one_the_platform_exports(
    start_runtime: StartRuntime, make_channels: MakeChannels
) -> None:
    exported = await exported_series(start_runtime, make_channels)
    named = set()
    for expression in [
        *rule_expressions(objects("prod")).values(),
        *dashboard_expressions(),
        *(rule["seriesQuery"] for rule in adapter_rules()),
    ]:
        named.update(set(PROMQL_NAME.findall(expression)) - LABELS)
    assert named
    assert named - exported == set(), sorted(named - exported)


def test_alerts_cover_errors_latency_breakers_and_saturation() -> None:
    alerts = rule_expressions(objects("prod"))
    assert "grpc_server_handled_total" in alerts["GrpcServerErrorRateHigh"]
    assert "Internal|Unavailable" in alerts["GrpcServerErrorRateHigh"]
    assert "grpc_server_handling_seconds_bucket" in alerts["GrpcLatencySLOBurnRateHigh"]
    assert "[1h]" in alerts["GrpcLatencySLOBurnRateHigh"]
    assert "[5m]" in alerts["GrpcLatencySLOBurnRateHigh"]
    assert "platform_client_breaker_state" in alerts["CircuitBreakerOpen"]
    assert "platform_aws_breaker_state" in alerts["CircuitBreakerOpen"]
    assert "platform_server_concurrency_limit" in alerts["GrpcServerSaturated"]
    assert "platform_server_event_loop_cpu_seconds_total" in alerts["GrpcServerEventLoopBusy"]
    assert "platform_saga_compensation_failed_total" in alerts["SagaCompensationFailed"]
    assert "platform_saga_oldest_running_seconds" in alerts["SagaStuck"]
    assert 'outcome="failed"' in alerts["QueueMessagesFailing"]
    assert "platform_queue_receive_errors_total" in alerts["QueueReceiveFailing"]


def test_hpa_metrics_are_the_ones_the_adapter_provides() -> None:
    provided = {rule["name"]["as"] for rule in adapter_rules()}
    for hpa in of_kind(objects("prod"), "HorizontalPodAutoscaler"):
        pods = {
            m["pods"]["metric"]["name"]: m["pods"]["target"]["averageValue"]
            for m in hpa["spec"]["metrics"]
            if m["type"] == "Pods"
        }
        assert set(pods) == {"platform_server_in_flight", "platform_server_event_loop_busy"}
        assert set(pods) <= provided
        # A share of one thread's time: a target at or above 1 (1000m) would never fire.
        assert 0 < quantity(pods["platform_server_event_loop_busy"]) < 1


def test_event_loop_busy_is_a_rate_of_the_loops_cpu_clock() -> None:
    (rule,) = [r for r in adapter_rules() if r["name"]["as"] == "platform_server_event_loop_busy"]
    assert rule["seriesQuery"].startswith("platform_server_event_loop_cpu_seconds_total{")
    assert "rate(<<.Series>>" in rule["metricsQuery"]


def quantity(value: str) -> float:
    """A Kubernetes quantity as the HPA reads it: plain or milli (`600m`)."""
    return int(value[:-1]) / 1000 if value.endswith("m") else float(value)


def test_vpa_only_recommends_and_targets_the_deployment() -> None:
    docs = objects("prod")
    deployments = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    for vpa in of_kind(docs, "VerticalPodAutoscaler"):
        assert vpa["apiVersion"] == "autoscaling.k8s.io/v1"
        assert vpa["spec"]["updatePolicy"]["updateMode"] == "Off"
        assert vpa["spec"]["targetRef"]["name"] in deployments


def test_service_monitors_scrape_the_admin_port_of_a_service() -> None:
    docs = objects("prod")
    services = of_kind(docs, "Service")
    for monitor in of_kind(docs, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        (target,) = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        ports = {p["name"] for p in target["spec"]["ports"]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"


def test_dashboard_is_a_config_map_grafana_picks_up() -> None:
    (dashboard,) = [
        c
        for c in of_kind(objects("prod"), "ConfigMap")
        if c["metadata"]["name"] == "ledger-grafana-dashboard"
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    parsed = json.loads(dashboard["data"]["ledger-grpc.json"])
    assert parsed["uid"] == "ledger-grpc"
    assert len(parsed["panels"]) >= 6
