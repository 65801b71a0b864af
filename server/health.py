"""Liveness, readiness and the standard `grpc.health.v1` service, kept in step.

- Liveness (`/health`, gRPC health service `liveness`): the process answers.
- Readiness (`/ready`, gRPC health for "" and for each served service):
  not draining and every readiness check of the application passes. A
  background loop re-evaluates the checks so gRPC probes (Kubernetes' native
  `grpc:` probes) see dependency outages too.
- On shutdown, `drain()` flips everything to NOT_SERVING first, through the
  health servicer's own `enter_graceful_shutdown` so nothing flips it back.

Uses grpcio-health-checking's aio servicer (the official implementation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from server.application import ReadinessCheck

LIVENESS = "liveness"
CHECK_TIMEOUT_SECONDS = 1.0

_log = logging.getLogger(__name__)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthState:
    def __init__(
        self,
        service_names: Sequence[str],
        checks: Mapping[str, ReadinessCheck],
        refresh_interval: float = 2.0,
    ) -> None:
        self.servicer = HealthServicer()
        self._service_names = ["", *service_names]
        self._checks = dict(checks)
        self._refresh_interval = refresh_interval
        self._draining = False
        self._ready = False
        self._refresher: asyncio.Task[None] | None = None

    @property
    def draining(self) -> bool:
        return self._draining

    async def start(self) -> None:
        await self.servicer.set(LIVENESS, _SERVING)
        await self.refresh()
        self._refresher = asyncio.create_task(self._refresh_forever(), name="health-refresh")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            await self.refresh()

    async def check(self) -> dict[str, bool]:
        """Runs every readiness check once (concurrently, each time-boxed)."""

        async def run(name: str, check: ReadinessCheck) -> bool:
            try:
                return bool(await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS))
            except Exception:
                _log.warning("readiness check failed", extra={"check": name}, exc_info=True)
                return False

        names = list(self._checks)
        results = await asyncio.gather(*(run(name, self._checks[name]) for name in names))
        return dict(zip(names, results, strict=True))

    async def readiness(self) -> tuple[bool, dict[str, bool]]:
        results = await self.check()
        return (not self._draining and all(results.values())), results

    async def refresh(self) -> None:
        if self._draining:
            return
        ready, _ = await self.readiness()
        if ready != self._ready or not self._refresher:
            status = _SERVING if ready else _NOT_SERVING
            for name in self._service_names:
                await self.servicer.set(name, status)
            if ready != self._ready:
                _log.info("readiness changed", extra={"ready": ready})
            self._ready = ready

    async def drain(self) -> None:
        self._draining = True
        await self.servicer.enter_graceful_shutdown()

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
