"""JSON logs on stderr through python-json-logger.

Field names follow PLATFORM.md (`timestamp` in RFC 3339 UTC, `log_level`,
`service_name`, `message`, ...); anything passed in `extra=` becomes a field.
The server interceptor chain adds the per-call fields.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


def configure_logging(service_name: str, level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "log_level", "name": "logger"},
            static_fields={"service_name": service_name},
            timestamp=True,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log would print one line per probe and scrape.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
