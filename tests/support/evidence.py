"""What a failed test's processes logged, attached to its report (tests/conftest.py).

A test that starts services writes their logs under its `tmp_path`, and the
session's moto writes one of its own; pytest keeps those directories for
three sessions only, and a flaky failure on a fresh clone (CI) is gone with
its machine. So a failed test's report carries, per log, the most frequent
messages with their counts (one line in 12,000 says less than "12,000 x
CIRCUIT_OPEN") and the last lines.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

TOP = 10
TAIL = 30
WIDTH = 300  # characters kept of a line: a stack trace's message, not the whole trace
BRACKETED = re.compile(r"\[[^\]]*\]")  # an access log's timestamp: moto's werkzeug lines


def message_key(line: str) -> str:
    """A JSON log line's level, logger, message and error code; else the line's start,
    without what is in brackets."""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return BRACKETED.sub("[]", line)[:80]
    parts = (record.get(k) for k in ("log_level", "logger", "message", "error_code"))
    return " ".join(str(part) for part in parts if part)


def summary(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    counts = Counter(message_key(line) for line in lines)
    top = "\n".join(f"{count:7d} x {key}" for key, count in counts.most_common(TOP))
    tail = "\n".join(line[:WIDTH] for line in lines[-TAIL:])
    return f"{path} ({len(lines)} lines)\nmost frequent:\n{top}\nlast {TAIL} lines:\n{tail}"


def process_logs(directories: Iterable[Path], files: Iterable[Path] = ()) -> list[Path]:
    """The `*.log` files under `directories`, then `files` that exist."""
    found = [path for directory in directories for path in sorted(directory.rglob("*.log"))]
    return found + [path for path in files if path.is_file()]
