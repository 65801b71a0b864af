"""The admin HTTP port: `/health` (liveness), `/ready` (readiness), `/metrics`.

Built on aiohttp (already a dependency of aiobotocore) in the server's own
event loop, so readiness reads the same state as gRPC health. `/metrics`
serves the process's Prometheus registry in the text exposition format.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from server.health import HealthState


class AdminServer:
    def __init__(
        self, health: HealthState, registry: CollectorRegistry, host: str, port: int
    ) -> None:
        self._health = health
        self._registry = registry
        self._host = host
        self._port = port
        app = web.Application()
        app.router.add_get("/health", self._liveness)
        app.router.add_get("/ready", self._readiness)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port = 0

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_port=False)
        await site.start()
        server = site._server  # aiohttp exposes no public accessor for the bound port
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _liveness(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readiness(self, _: web.Request) -> web.Response:
        ready, checks = await self._health.readiness()
        body = {"ready": ready, "draining": self._health.draining, "checks": checks}
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self._registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
