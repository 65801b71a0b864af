"""The order of the server chain, in one place.

For every method of every servicer, the layers run in this order (`begin`
top to bottom before the handler, `end` bottom to top after it):

1. correlation   - correlation id from the caller or new; echoed in trailers
2. tracing       - server span, W3C trace context and baggage made current
                   (no exporter: only the caller's context, no span)
3. metrics       - go-grpc-prometheus counters, histogram, in-flight gauge
4. access log    - one JSON line per call (written at `end`, so it sees the code)
5. deadline      - contract default when none, clamp, reject expired, budget var
6. rate limit    - token bucket per method and caller (when configured)
7. shedding      - adaptive concurrency limit (when enabled)
8. validation    - protovalidate rules of the contract
9. the application's own layers (`Application.interceptors`): they see only
   calls that passed everything above, with valid requests
then the handler. Errors from any of them, or from the handler, are mapped
to rich statuses in one place (interceptors.chain, interceptors.errors), so
a throttled call is logged, counted and traced like any other.

Observability comes first so that rejections are visible; cheap rejections
(deadline, rate, shedding) come before validation, which costs more.
Health, reflection and the admin port are outside the chain.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from interceptors.access_log import AccessLogLayer, CallLogging
from interceptors.call import Layer
from interceptors.chain import ServerChain
from interceptors.correlation import CorrelationLayer
from interceptors.deadline import DeadlineLayer
from interceptors.errors import ErrorMapper
from interceptors.metrics import MetricsLayer, RpcMetrics
from interceptors.policy import MethodPolicy
from interceptors.ratelimit import RateLimitLayer
from interceptors.redaction import Redactor
from interceptors.shedding import AdaptiveLimit, SheddingLayer, ShedSettings
from interceptors.tracing import PropagationLayer, TracingLayer
from interceptors.validation import RequestValidator, ValidationLayer
from server.config import ServerConfig


def build_server_chain(
    config: ServerConfig,
    registry: CollectorRegistry,
    tracer: Tracer | None,  # None: no spans are exported, only context is propagated
    error_domain: str,
    errors: ErrorMapper,
    application_layers: Sequence[Layer] = (),
) -> ServerChain:
    metrics = RpcMetrics(registry, "server")
    correlation = CorrelationLayer()
    propagation = PropagationLayer()
    access_log = AccessLogLayer(CallLogging(config.log_calls), Redactor(config.log_redact_fields))
    deadline = DeadlineLayer(config.max_deadline)
    validator = RequestValidator()
    validation = ValidationLayer(validator)
    limiter = AdaptiveLimit(
        ShedSettings(
            initial_limit=config.shed_initial_limit,
            min_limit=config.shed_min_limit,
            max_limit=config.shed_max_limit,
        )
    )
    metrics.concurrency_limit = lambda: limiter.limit

    def layers_for(policy: MethodPolicy) -> list[Layer]:
        stats = metrics.for_method(policy)
        layers: list[Layer] = [
            correlation,
            propagation if tracer is None else TracingLayer(tracer, policy),
            MetricsLayer(stats),
            access_log,
            deadline,
        ]
        rate = config.rate_for(policy.full_method)
        if rate is not None:
            layers.append(RateLimitLayer(rate, stats))
        if config.shed_enabled:
            layers.append(SheddingLayer(limiter, stats))
        layers.append(validation)
        layers.extend(application_layers)
        return layers

    return ServerChain(layers_for, validator, errors, error_domain)
