"""The order of the server chain, in one place.

For every method of every servicer, the call is made the current inbound
work first (interceptors.inbound), then the layers run in this order (`begin`
top to bottom before the handler, `end` bottom to top after it):

1. metrics       - go-grpc-prometheus counters, histogram, in-flight gauge
2. correlation   - correlation id from the caller or new; echoed in trailers
3. tracing       - server span, W3C trace context and baggage made current
                   (no exporter: only the caller's context, no span)
4. access log    - a JSON line per failed or slow call, or per call (written at
                   `end`, so it sees the code)
5. authorization - with TLS on, only calls that came over TLS; with mTLS
                   (TLS_CLIENT_CA_FILE), the caller's certificate identity,
                   checked against the method's allowed callers
                   (interceptors.authorization)
6. deadline      - contract default when none, clamp, reject expired, the budget
7. rate limit    - token bucket per method and caller (when configured), per
                   authenticated identity under mTLS
8. shedding      - adaptive concurrency limit, and the share of calls a
                   standing queue in gRPC's core asks to shed (when enabled;
                   only of methods whose calls are not cheap)
9. validation    - protovalidate rules of the contract (compiled fast path
                   for valid requests, interceptors.compiled_rules)
10. the application's own layers (`Application.interceptors`): they see only
   calls that passed everything above, with valid requests
then the handler. Errors from any of them, or from the handler, are mapped
to rich statuses in one place (interceptors.chain, interceptors.errors), so
a throttled call is logged, counted and traced like any other.

Observability comes first so that rejections are visible; a caller that is
not allowed is turned away before anything is spent on it, and before the
rate limit, which counts per identity; cheap rejections (deadline, rate,
shedding) come before validation, which costs more.
Health, reflection and the admin port are outside the chain.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from interceptors.access_log import AccessLog, CallLogging
from interceptors.authorization import AuthorizationLayer
from interceptors.call import Layer
from interceptors.chain import ServerChain, Steps
from interceptors.correlation import CorrelationLayer
from interceptors.deadline import DeadlineLayer
from interceptors.errors import ErrorMapper
from interceptors.metrics import MetricsLayer, RpcMetrics
from interceptors.policy import MethodPolicy
from interceptors.queue_delay import QueueDelayGate
from interceptors.ratelimit import RateLimitLayer
from interceptors.redaction import Redactor
from interceptors.shedding import AdaptiveLimit, SheddingLayer, ShedSettings
from interceptors.tracing import PropagationLayer, TracingLayer
from interceptors.validation import RequestValidator
from server.config import ServerConfig


def build_server_chain(
    config: ServerConfig,
    registry: CollectorRegistry,
    tracer: Tracer | None,  # None: no spans are exported, only context is propagated
    error_domain: str,
    errors: ErrorMapper,
    queue_delay: QueueDelayGate,
    application_layers: Sequence[Layer] = (),
) -> ServerChain:
    metrics = RpcMetrics(registry, "server")
    correlation = CorrelationLayer()
    propagation = PropagationLayer()
    access_log = AccessLog(
        CallLogging(config.log_calls), Redactor(config.log_redact_fields), config.log_slow_calls
    )
    deadline = DeadlineLayer(config.max_deadline)
    limiter = AdaptiveLimit(
        ShedSettings(
            initial_limit=config.shed_initial_limit,
            min_limit=config.shed_min_limit,
            max_limit=config.shed_max_limit,
        )
    )
    metrics.concurrency_limit = lambda: limiter.limit
    if queue_delay.on:  # else nothing measures it (server.runtime)
        metrics.queue_delay = lambda: queue_delay.delay

    def authorization_of(policy: MethodPolicy) -> AuthorizationLayer:
        rules = config.authorization  # None without client certificates: TLS only
        allowed = None if rules is None else rules.callers_for(policy.full_method)
        return AuthorizationLayer(policy.full_method, allowed, identify=rules is not None)

    def steps_for(policy: MethodPolicy) -> Steps:
        stats = metrics.for_method(policy)
        rate = config.rate_for(policy.full_method)
        return Steps(
            metrics=MetricsLayer(stats),
            correlation=correlation,
            tracing=propagation if tracer is None else TracingLayer(tracer, policy),
            access_log=access_log,
            authorization=None if config.tls is None else authorization_of(policy),
            deadline=deadline,
            rate_limit=None if rate is None else RateLimitLayer(rate, stats),
            shedding=(
                SheddingLayer(limiter, queue_delay, stats, config.shed_queue_delay_min_handling)
                if config.shed_enabled
                else None
            ),
            application=application_layers,
        )

    return ServerChain(
        steps_for, RequestValidator(), errors, error_domain, config.max_send_message_bytes
    )
