"""Client settings: the defaults in one place, overrides from the environment.

The defaults are the dataclasses' own (interceptors.retry.RetryPolicy,
interceptors.breaker.BreakerSettings, interceptors.bulkhead.BulkheadSettings,
clients.resilience.Resilience), which follow PLATFORM.md. Every knob below
can be set for all dependencies as `CLIENT_<KNOB>` and for one dependency as
`CLIENT_<DEPENDENCY>_<KNOB>` (the name a service gives
`channels.connect(target, dependency="accounts")`, upper-cased):

| knob | default |
| --- | --- |
| RETRY_MAX_ATTEMPTS | 3 |
| RETRY_INITIAL_BACKOFF_SECONDS | 0.05 |
| RETRY_MAX_BACKOFF_SECONDS | 1 |
| BREAKER_ENABLED | true |
| BREAKER_FAILURE_RATE | 0.5 |
| BREAKER_MINIMUM_CALLS | 20 |
| BREAKER_OPEN_SECONDS | 5 |
| BULKHEAD_MAX_CONCURRENT | 64 |
| BULKHEAD_MAX_WAIT_SECONDS | 0 |
| RATE_LIMIT_RPS | 0 (off) |
| RATE_LIMIT_BURST | the rate |
| RATE_LIMIT_MAX_WAIT_SECONDS | 0 |

Per method, `CLIENT_METHOD_OVERRIDES` holds comma-separated
`package.Service/Method:deadline=1.5:max_attempts=2` entries (the contract's
default deadline and the retry attempts of that method). A bad value stops
start-up with one line naming the variable (the reader is the server's
`EnvReader`, passed in: this module does not import `server/`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

from clients.resilience import Resilience
from interceptors.breaker import BreakerSettings
from interceptors.bulkhead import BulkheadSettings
from interceptors.ratelimit import Rate
from interceptors.retry import RetryPolicy

PREFIX = "CLIENT_"


class Reader(Protocol):
    """What `server.config.EnvReader` offers (typed reads that name the variable)."""

    def string(self, name: str, default: str | None = None) -> str: ...

    def integer(
        self, name: str, default: str | None = None, *, minimum: int = 0, maximum: int = ...
    ) -> int: ...

    def seconds(self, name: str, default: str | None = None) -> float: ...

    def number(self, name: str, default: str | None = None) -> float: ...

    def ratio(self, name: str, default: str | None = None) -> float: ...

    def boolean(self, name: str, default: str | None = None) -> bool: ...


class SettingsError(ValueError):
    """A client setting is malformed; the message names the variable."""


@dataclass(frozen=True)
class MethodOverride:
    deadline: float | None = None
    max_attempts: int | None = None


class ClientSettings:
    """Reads `CLIENT_*` at once, and `CLIENT_<DEPENDENCY>_*` when a dependency is first
    connected (still during start-up: services connect in their factory, before any
    port is bound)."""

    def __init__(self, read: Reader | None = None) -> None:
        self._read = read
        self.retry, self.resilience = (
            _knobs(read, PREFIX, RetryPolicy(), Resilience())
            if read
            else (RetryPolicy(), Resilience())
        )
        self.methods = _method_overrides(read.string("CLIENT_METHOD_OVERRIDES", "")) if read else {}
        self._dependencies: dict[str, tuple[RetryPolicy, Resilience]] = {}

    def for_dependency(self, dependency: str | None) -> tuple[RetryPolicy, Resilience]:
        if dependency is None or self._read is None:
            return self.retry, self.resilience
        key = dependency.upper().replace("-", "_")
        if key not in self._dependencies:
            self._dependencies[key] = _knobs(
                self._read, f"{PREFIX}{key}_", self.retry, self.resilience
            )
        return self._dependencies[key]


def _knobs(
    read: Reader, prefix: str, retry: RetryPolicy, resilience: Resilience
) -> tuple[RetryPolicy, Resilience]:
    def name(knob: str) -> str:
        return f"{prefix}{knob}"

    retry = dataclasses.replace(
        retry,
        max_attempts=read.integer(
            name("RETRY_MAX_ATTEMPTS"), str(retry.max_attempts), minimum=1, maximum=10
        ),
        initial_backoff=read.seconds(
            name("RETRY_INITIAL_BACKOFF_SECONDS"), str(retry.initial_backoff)
        ),
        max_backoff=read.seconds(name("RETRY_MAX_BACKOFF_SECONDS"), str(retry.max_backoff)),
    )
    breaker = resilience.breaker or BreakerSettings()
    breaker_on = read.boolean(name("BREAKER_ENABLED"), str(resilience.breaker is not None))
    breaker = dataclasses.replace(
        breaker,
        failure_rate=read.ratio(name("BREAKER_FAILURE_RATE"), str(breaker.failure_rate)),
        minimum_calls=read.integer(
            name("BREAKER_MINIMUM_CALLS"), str(breaker.minimum_calls), minimum=1
        ),
        open_seconds=read.seconds(name("BREAKER_OPEN_SECONDS"), str(breaker.open_seconds)),
    )
    bulkhead = resilience.bulkhead or BulkheadSettings()
    bulkhead = dataclasses.replace(
        bulkhead,
        max_concurrent=read.integer(
            name("BULKHEAD_MAX_CONCURRENT"), str(bulkhead.max_concurrent), minimum=1
        ),
        max_wait=read.seconds(name("BULKHEAD_MAX_WAIT_SECONDS"), str(bulkhead.max_wait)),
    )
    rate = resilience.rate
    per_second = read.number(name("RATE_LIMIT_RPS"), str(rate.per_second if rate else 0))
    burst = read.number(name("RATE_LIMIT_BURST"), str(rate.burst if rate else 0))
    if per_second > 0 and (burst or per_second) < 1:
        raise SettingsError(f"{name('RATE_LIMIT_BURST')} must be at least 1, got {burst:g}")
    resilience = Resilience(
        breaker=breaker if breaker_on else None,
        bulkhead=bulkhead,
        rate=Rate(per_second, burst or per_second) if per_second > 0 else None,
        rate_max_wait=read.seconds(
            name("RATE_LIMIT_MAX_WAIT_SECONDS"), str(resilience.rate_max_wait)
        ),
    )
    return retry, resilience


def _method_overrides(raw: str) -> dict[str, MethodOverride]:
    overrides: dict[str, MethodOverride] = {}
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        method, *options = entry.split(":")
        deadline: float | None = None
        max_attempts: int | None = None
        try:
            if method.count("/") != 1:
                raise ValueError(entry)
            for option in options:
                key, _, value = option.partition("=")
                if key == "deadline" and float(value) > 0:
                    deadline = float(value)
                elif key == "max_attempts" and 1 <= int(value) <= 10:
                    max_attempts = int(value)
                else:
                    raise ValueError(option)
        except ValueError:
            raise SettingsError(
                "CLIENT_METHOD_OVERRIDES entries must look like "
                f"package.Service/Method:deadline=SECONDS:max_attempts=N, got {entry!r}"
            ) from None
        overrides["/" + method.lstrip("/")] = MethodOverride(deadline, max_attempts)
    return overrides
