"""Configuration from the environment, validated before anything starts.

Every setting has a name, a type and a default, listed in `SETTINGS` (the
README's table is checked against it by the tests). A bad value raises
`ConfigError` whose message is one line naming the variable; `server.main`
prints it and exits 2 before a port is bound. Services read their own
variables through the same `EnvReader`, so their errors look the same.

Durations are float seconds with a `_SECONDS` suffix, sizes are bytes.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from interceptors.authorization import AuthorizationPolicy, PolicyError
from interceptors.ratelimit import Rate
from server.event_loop import EVENT_LOOPS
from server.tls import TlsFileError, TlsFiles

_INTEGER = re.compile(r"-?[0-9]+")
# grpc's channel arguments are C ints, and durations go to it in milliseconds: larger
# values overflowed with a traceback at start-up.
MAX_INT = 2**31 - 1
MAX_SECONDS = MAX_INT // 1000
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str
    default: str | None
    description: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "SERVICE",
        "string",
        None,
        "Service to run: a name of the `grpcplatform.services` entry points "
        "(`accounts`, `transfers`) or `module:attribute`.",
    ),
    Setting("GRPC_HOST", "string", "0.0.0.0", "Address the gRPC port listens on."),
    Setting("GRPC_PORT", "port", "50051", "gRPC port (0: any free port)."),
    Setting(
        "ADMIN_HOST",
        "string",
        "0.0.0.0",
        "Address of the admin HTTP port (`/health`, `/ready`, `/metrics`).",
    ),
    Setting("ADMIN_PORT", "port", "8081", "Admin HTTP port (0: any free port)."),
    Setting(
        "EVENT_LOOP",
        "UVLOOP or ASYNCIO",
        "UVLOOP",
        "Event loop of the process: uvloop (grpc.aio's per-call scheduling costs less; "
        "see Performance) or the standard library's.",
    ),
    Setting(
        "LOG_LEVEL",
        "level",
        "INFO",
        "Lowest level logged: DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    ),
    Setting(
        "GRPC_MAX_RECEIVE_MESSAGE_BYTES", "int", "4194304", "Largest request message accepted."
    ),
    Setting("GRPC_MAX_SEND_MESSAGE_BYTES", "int", "4194304", "Largest response message sent."),
    Setting(
        "GRPC_MAX_CONCURRENT_STREAMS", "int", "1000", "Concurrent calls per HTTP/2 connection."
    ),
    Setting(
        "GRPC_KEEPALIVE_TIME_SECONDS",
        "float",
        "30",
        "Idle time after which the server pings a client.",
    ),
    Setting(
        "GRPC_KEEPALIVE_TIMEOUT_SECONDS",
        "float",
        "10",
        "How long a ping may go unanswered before the connection is closed.",
    ),
    Setting(
        "GRPC_MIN_PING_INTERVAL_SECONDS",
        "float",
        "10",
        "Most frequent client keepalive ping the server tolerates.",
    ),
    Setting(
        "GRPC_MAX_CONNECTION_IDLE_SECONDS",
        "float",
        "300",
        "An idle connection is closed after this long.",
    ),
    Setting(
        "GRPC_MAX_CONNECTION_AGE_SECONDS",
        "float",
        "300",
        "A connection is closed (GOAWAY) after this long, so clients behind an L4 "
        "load balancer reconnect and spread over new pods (gRFC A9).",
    ),
    Setting(
        "GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS",
        "float",
        "30",
        "Time calls on an aged connection get to finish.",
    ),
    Setting(
        "TLS_CERT_FILE",
        "path",
        "",
        "PEM certificate (chain) of the gRPC port; with `TLS_KEY_FILE`, the port serves "
        "TLS only. Reloaded when the file changes. Empty: plaintext.",
    ),
    Setting("TLS_KEY_FILE", "path", "", "PEM private key of `TLS_CERT_FILE`."),
    Setting(
        "TLS_CLIENT_CA_FILE",
        "path",
        "",
        "PEM CA certificate(s): every caller must present a certificate they signed "
        "(mTLS), whose SPIFFE ID, else common name, is its identity. Empty: not asked.",
    ),
    Setting(
        "AUTHZ_RULES",
        "list",
        "",
        "Which callers may call what, e.g. `ledger.v1.Accounts/Withdraw=transfers|ops,"
        "ledger.v1.Accounts/*=*`; a method no rule matches is denied. Needs "
        "`TLS_CLIENT_CA_FILE`. Empty: every authenticated caller.",
    ),
    Setting(
        "SHUTDOWN_DELAY_SECONDS",
        "float",
        "0",
        "On SIGTERM, time spent NOT_SERVING (health and `/ready`) before the "
        "listener closes, for load balancers to stop sending.",
    ),
    Setting(
        "MAX_DEADLINE_SECONDS",
        "float",
        "60",
        "Longest deadline a call gets; a caller's longer (or absent-and-default) one is clamped.",
    ),
    Setting(
        "ERROR_DOMAIN",
        "string",
        "",
        "`ErrorInfo.domain` of this service's errors (empty: the application's, "
        "else `<SERVICE>.grpc-platform.internal`, with the module of a `module:attribute` "
        "SERVICE).",
    ),
    Setting(
        "LOG_CALLS",
        "ALL, ERRORS or NONE",
        "ERRORS",
        "Which calls get an access-log line: every call, failed and slow calls "
        "(`LOG_SLOW_CALLS_SECONDS`), or none. "
        "ALL costs about 40% of a small handler's throughput (see `make bench`).",
    ),
    Setting(
        "LOG_SLOW_CALLS_SECONDS",
        "float",
        "1",
        "A unary call this slow or slower gets an access-log line marked `slow`, with its "
        "sanitised request, at WARNING when it succeeded (0, or `LOG_CALLS=NONE`: no "
        "slow-call lines).",
    ),
    Setting(
        "LOG_REDACT_FIELDS",
        "list",
        "",
        "Names never logged, besides fields marked `debug_redact` in the contract and the "
        "built-in password, passphrase, secret, token, authorization, api_key, private_key, "
        "credential(s) and cookie; a field or map key is hidden when its name has one as "
        "whole words (`secret`: `client_secret`, `clientSecret`).",
    ),
    Setting(
        "TRACING_EXPORTER",
        "NONE, CONSOLE or OTLP",
        "NONE",
        "Where spans go; OTLP reads the standard `OTEL_EXPORTER_OTLP_*` variables.",
    ),
    Setting(
        "TRACING_SAMPLE_RATIO",
        "ratio",
        "1",
        "Share of new traces sampled (parent-based: a caller's decision is kept).",
    ),
    Setting(
        "RATE_LIMIT_RPS",
        "float",
        "0",
        "Calls per second per method and caller (its mTLS identity, else `x-client-id`, "
        "else address); 0: off.",
    ),
    Setting(
        "RATE_LIMIT_BURST", "float", "0", "Bucket size of the rate limit (0: same as the rate)."
    ),
    Setting(
        "RATE_LIMIT_OVERRIDES",
        "list",
        "",
        "Per-method limits, e.g. `ledger.v1.Accounts/Withdraw=10:20` (rate:burst), "
        "comma-separated; a rate of 0 turns the limit off for that method.",
    ),
    Setting(
        "SHED_ENABLED",
        "bool",
        "true",
        "Load shedding on: the adaptive concurrency limit and queue-delay shedding "
        "(false turns off both, and the probe).",
    ),
    Setting("SHED_INITIAL_LIMIT", "int", "100", "Concurrency limit at start."),
    Setting("SHED_MIN_LIMIT", "int", "20", "The limit never goes below this."),
    Setting("SHED_MAX_LIMIT", "int", "1000", "The limit never goes above this."),
    Setting(
        "SHED_QUEUE_DELAY_SECONDS",
        "float",
        "0.05",
        "Shed a growing share of the calls of methods that are not cheap "
        "(`SHED_QUEUE_DELAY_MIN_HANDLING_SECONDS`) while calls wait this long to start, for "
        "0.25 s (a CPU-bound overload, which the concurrency limit cannot see); 0: off, and "
        "no probe; else at least 0.005 (an idle server's probe takes under 1 ms).",
    ),
    Setting(
        "SHED_QUEUE_DELAY_MIN_HANDLING_SECONDS",
        "float",
        "0.0005",
        "Queue-delay shedding turns away calls only of methods whose served calls take at "
        "least this long (moving average): cheaper calls cost about as much to reject as "
        "to serve.",
    ),
    Setting(
        "SHUTDOWN_GRACE_SECONDS",
        "float",
        "20",
        "Then, time in-flight calls get to finish before they are cancelled.",
    ),
)
_BY_NAME = {setting.name: setting for setting in SETTINGS}


class EnvReader:
    """Typed, validated reads of environment variables."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def _raw(self, name: str, default: str | None) -> str:
        if default is None and name in _BY_NAME:
            default = _BY_NAME[name].default
        value = self._env.get(name, "").strip()
        if value:
            return value
        if default is None:
            raise ConfigError(f"{name} is required but not set")
        return default

    def string(self, name: str, default: str | None = None) -> str:
        return self._raw(name, default)

    def integer(
        self, name: str, default: str | None = None, *, minimum: int = 0, maximum: int = MAX_INT
    ) -> int:
        raw = self._raw(name, default)
        bounds = f"from {minimum} to {maximum}"
        if not _INTEGER.fullmatch(raw):
            raise ConfigError(f"{name} must be an integer {bounds}, got {raw!r}")
        value = int(raw)
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name} must be an integer {bounds}, got {raw!r}")
        return value

    def port(self, name: str, default: str | None = None) -> int:
        return self.integer(name, default, minimum=0, maximum=65535)

    def seconds(self, name: str, default: str | None = None) -> float:
        return self._non_negative(name, default, "a number of seconds")

    def number(self, name: str, default: str | None = None) -> float:
        """A rate or a size (calls per second, a bucket's calls), not a time."""
        return self._non_negative(name, default, "a number")

    def _non_negative(self, name: str, default: str | None, kind: str) -> float:
        raw = self._raw(name, default)
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not 0 <= value <= MAX_SECONDS:  # also refuses nan; inf is above it
            raise ConfigError(f"{name} must be {kind} from 0 to {MAX_SECONDS}, got {raw!r}")
        return value

    def ratio(self, name: str, default: str | None = None) -> float:
        raw = self._raw(name, default)
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be a number from 0 to 1, got {raw!r}")
        return value

    def boolean(self, name: str, default: str | None = None) -> bool:
        raw = self._raw(name, default)
        lowered = raw.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")

    def names(self, name: str, default: str | None = None) -> tuple[str, ...]:
        raw = self._raw(name, default)
        return tuple(part.strip() for part in raw.split(",") if part.strip())

    def choice(self, name: str, choices: tuple[str, ...], default: str | None = None) -> str:
        raw = self._raw(name, default)
        if raw.upper() not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return raw.upper()


def _positive(read: EnvReader, name: str, least: float = 0.0) -> float:
    """Seconds above 0 (and at least `least`): where 0 would break every connection or call."""
    value = read.seconds(name)
    if value <= 0 or value < least:
        bound = f">= {least:g}" if least else "> 0"
        raise ConfigError(f"{name} must be a number of seconds {bound}, got '{value:g}'")
    return value


def _off_or_at_least(read: EnvReader, name: str, least: float) -> float:
    value = read.seconds(name)
    if 0 < value < least:
        raise ConfigError(f"{name} must be 0 (off) or at least {least:g} seconds, got '{value:g}'")
    return value


def _rate(name: str, per_second: float, burst: float) -> Rate | None:
    if per_second == 0:
        return None
    if per_second < 0:
        raise ConfigError(f"{name}: the rate must be >= 0, got {per_second:g}")
    burst = burst or per_second
    if burst < 1:
        raise ConfigError(f"{name}: the burst must be at least 1 call, got {burst:g}")
    return Rate(per_second, burst)  # Rate checks rate > 0 (ValueError otherwise)


def _rate_overrides(entries: tuple[str, ...]) -> dict[str, Rate | None]:
    overrides: dict[str, Rate | None] = {}
    for entry in entries:
        method, _, limit = entry.partition("=")
        rate, _, burst = limit.partition(":")
        try:
            if method.count("/") != 1 or not method.strip("/"):
                raise ValueError(entry)
            per_second, size = float(rate), float(burst or 0)
            if not (math.isfinite(per_second) and math.isfinite(size)):
                raise ValueError(entry)  # inf would turn the limit off, nan fail each call
            overrides["/" + method.strip().lstrip("/")] = _rate(
                "RATE_LIMIT_OVERRIDES", per_second, size
            )
        except ValueError:
            raise ConfigError(
                "RATE_LIMIT_OVERRIDES entries must look like "
                f"package.Service/Method=rate[:burst], got {entry!r}"
            ) from None
    return overrides


def _tls(read: EnvReader) -> TlsFiles | None:
    try:
        return TlsFiles.checked(
            read.string("TLS_CERT_FILE"),
            read.string("TLS_KEY_FILE"),
            read.string("TLS_CLIENT_CA_FILE"),
        )
    except TlsFileError as error:
        raise ConfigError(str(error)) from None


def _authorization(read: EnvReader, tls: TlsFiles | None) -> AuthorizationPolicy | None:
    """The policy when callers are authenticated (mTLS), else None."""
    entries = read.names("AUTHZ_RULES")
    if tls is None or tls.client_ca is None:
        if entries:
            raise ConfigError(
                "AUTHZ_RULES needs TLS_CLIENT_CA_FILE: without client certificates no caller "
                "is known"
            )
        return None
    try:
        return AuthorizationPolicy.parse(entries)
    except PolicyError as error:
        raise ConfigError(str(error)) from None


def _shed_limits(read: EnvReader) -> dict[str, int]:
    limits = {
        "shed_initial_limit": read.integer("SHED_INITIAL_LIMIT", minimum=1),
        "shed_min_limit": read.integer("SHED_MIN_LIMIT", minimum=1),
        "shed_max_limit": read.integer("SHED_MAX_LIMIT", minimum=1),
    }
    if not limits["shed_min_limit"] <= limits["shed_initial_limit"] <= limits["shed_max_limit"]:
        raise ConfigError(
            "SHED_INITIAL_LIMIT must lie between SHED_MIN_LIMIT and SHED_MAX_LIMIT, got "
            f"{limits['shed_initial_limit']} not in "
            f"{limits['shed_min_limit']}..{limits['shed_max_limit']}"
        )
    return limits


@dataclass(frozen=True)
class ServerConfig:
    service: str
    grpc_host: str
    grpc_port: int
    admin_host: str
    admin_port: int
    event_loop: str
    log_level: int
    max_receive_message_bytes: int
    max_send_message_bytes: int
    max_concurrent_streams: int
    keepalive_time: float
    keepalive_timeout: float
    min_ping_interval: float
    max_connection_idle: float
    max_connection_age: float
    max_connection_age_grace: float
    shutdown_delay: float
    shutdown_grace: float
    max_deadline: float
    error_domain: str
    log_calls: str
    log_slow_calls: float
    log_redact_fields: tuple[str, ...]
    tracing_exporter: str
    tracing_sample_ratio: float
    rate_limit: Rate | None
    rate_limit_overrides: Mapping[str, Rate | None]
    shed_enabled: bool
    shed_initial_limit: int
    shed_min_limit: int
    shed_max_limit: int
    shed_queue_delay: float
    shed_queue_delay_min_handling: float
    tls: TlsFiles | None
    authorization: AuthorizationPolicy | None  # None: callers are not authenticated

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServerConfig:
        read = EnvReader(env)
        tls = _tls(read)
        return cls(
            service=read.string("SERVICE"),
            grpc_host=read.string("GRPC_HOST"),
            grpc_port=read.port("GRPC_PORT"),
            admin_host=read.string("ADMIN_HOST"),
            admin_port=read.port("ADMIN_PORT"),
            event_loop=read.choice("EVENT_LOOP", EVENT_LOOPS),
            log_level=logging.getLevelNamesMapping()[read.choice("LOG_LEVEL", LOG_LEVELS)],
            max_receive_message_bytes=read.integer("GRPC_MAX_RECEIVE_MESSAGE_BYTES", minimum=1024),
            max_send_message_bytes=read.integer("GRPC_MAX_SEND_MESSAGE_BYTES", minimum=1024),
            max_concurrent_streams=read.integer("GRPC_MAX_CONCURRENT_STREAMS", minimum=1),
            # grpc takes these in whole milliseconds, and 0 would close every connection.
            keepalive_time=_positive(read, "GRPC_KEEPALIVE_TIME_SECONDS", 0.001),
            keepalive_timeout=_positive(read, "GRPC_KEEPALIVE_TIMEOUT_SECONDS", 0.001),
            min_ping_interval=read.seconds("GRPC_MIN_PING_INTERVAL_SECONDS"),
            max_connection_idle=_positive(read, "GRPC_MAX_CONNECTION_IDLE_SECONDS", 0.001),
            max_connection_age=_positive(read, "GRPC_MAX_CONNECTION_AGE_SECONDS", 0.001),
            max_connection_age_grace=read.seconds("GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS"),
            shutdown_delay=read.seconds("SHUTDOWN_DELAY_SECONDS"),
            shutdown_grace=read.seconds("SHUTDOWN_GRACE_SECONDS"),
            max_deadline=_positive(read, "MAX_DEADLINE_SECONDS"),
            error_domain=read.string("ERROR_DOMAIN"),
            log_calls=read.choice("LOG_CALLS", ("ALL", "ERRORS", "NONE")),
            log_slow_calls=read.seconds("LOG_SLOW_CALLS_SECONDS"),
            log_redact_fields=read.names("LOG_REDACT_FIELDS"),
            tracing_exporter=read.choice("TRACING_EXPORTER", ("NONE", "CONSOLE", "OTLP")),
            tracing_sample_ratio=read.ratio("TRACING_SAMPLE_RATIO"),
            rate_limit=_rate(
                "RATE_LIMIT_RPS",
                read.number("RATE_LIMIT_RPS"),
                read.number("RATE_LIMIT_BURST"),
            ),
            rate_limit_overrides=_rate_overrides(read.names("RATE_LIMIT_OVERRIDES")),
            shed_enabled=read.boolean("SHED_ENABLED"),
            **_shed_limits(read),
            # An idle server's probe takes under a millisecond: a bound near that sheds always.
            shed_queue_delay=_off_or_at_least(read, "SHED_QUEUE_DELAY_SECONDS", 0.005),
            shed_queue_delay_min_handling=read.seconds("SHED_QUEUE_DELAY_MIN_HANDLING_SECONDS"),
            tls=tls,
            authorization=_authorization(read, tls),
        )

    def rate_for(self, full_method: str) -> Rate | None:
        """The rate limit of one method (`/package.Service/Method`); None: unlimited."""
        if full_method in self.rate_limit_overrides:
            return self.rate_limit_overrides[full_method]
        return self.rate_limit

    def grpc_options(self) -> list[tuple[str, int]]:
        def ms(seconds: float) -> int:
            return int(seconds * 1000)

        return [
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.max_send_message_length", self.max_send_message_bytes),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.keepalive_time_ms", ms(self.keepalive_time)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout)),
            ("grpc.http2.min_ping_interval_without_data_ms", ms(self.min_ping_interval)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_connection_idle_ms", ms(self.max_connection_idle)),
            ("grpc.max_connection_age_ms", ms(self.max_connection_age)),
            ("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace)),
            # Two servers must never share a port silently (a stale process would
            # take half the traffic).
            ("grpc.so_reuseport", 0),
        ]
