"""Graceful shutdown: stop being chosen, then drain, then exit 0.

On SIGTERM (Kubernetes) or SIGINT (Ctrl-C) the runtime, in this order:
1. flips readiness and every gRPC health status to NOT_SERVING;
2. keeps serving for SHUTDOWN_DELAY_SECONDS so that load balancers and
   clients watching health stop sending (the listener is still open);
3. stops accepting calls and lets in-flight ones finish within
   SHUTDOWN_GRACE_SECONDS (`grpc.aio.Server.stop(grace)`), cancelling what is
   left after that;
4. runs the application's shutdown hooks, closes outbound channels, and
   closes the admin port last, so `/ready` answers 503 throughout.

A second signal during the drain is logged and ignored: the drain is bounded.
Caveat (grpc/grpc#37239): calls that abort during the grace are not drained
gracefully by grpc itself; our tests drain real handlers to show the rest.
"""

from __future__ import annotations

import asyncio
import logging
import signal

_log = logging.getLogger(__name__)


class ShutdownSignal:
    """Resolves when SIGTERM or SIGINT arrives (installed on the running loop)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.received: str | None = None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._event.is_set():
            _log.warning("already draining; signal ignored", extra={"signal": sig.name})
            return
        self.received = sig.name
        self._event.set()

    async def wait(self) -> str | None:
        await self._event.wait()
        return self.received
