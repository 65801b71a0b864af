"""What a failed test's processes logged, attached to its report (tests/conftest.py).

Every process a test starts (services, moto: its own, its module's or the
session's) writes its log under the session's temporary root; pytest keeps
those directories for three sessions only, and a flaky failure on a fresh
clone (CI) is gone with its machine. So a failed test's report carries, for
each log that grew while the test ran, what it logged then: the most
frequent messages with their counts (one line in 12,000 says less than
"12,000 x CIRCUIT_OPEN") and the last lines, from at most the last
MAX_BYTES, so a failure costs little however much was logged.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

TOP = 10
TAIL = 30
WIDTH = 300  # characters kept of a tail line (a JSON line's stack trace is cut off)
KEY_WIDTH = 120
MAX_BYTES = 4 << 20
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
    return " ".join(str(part) for part in parts if part)[:KEY_WIDTH]


def summary(path: Path, start: int = 0) -> str:
    """The log from byte `start` on (at most its last MAX_BYTES): counts and tail."""
    with path.open("rb") as log:
        end = log.seek(0, 2)
        begin = max(start, end - MAX_BYTES)
        log.seek(begin)
        text = log.read().decode(errors="replace")
    lines = text.splitlines()
    if begin > start and lines:
        lines = lines[1:]  # read from the middle of a line
    lines = [line for line in lines if line.strip()]
    counts = Counter(message_key(line) for line in lines)
    top = "\n".join(f"{count:7d} x {key}" for key, count in counts.most_common(TOP))
    tail = "\n".join(line[:WIDTH] for line in lines[-TAIL:])
    part = f", its last {MAX_BYTES / 2**20:g} MB" if begin > start else ""
    if start:
        part += f", from byte {start}"
    return (
        f"{path} ({len(lines)} lines{part})\nmost frequent:\n{top}\n"
        f"last {min(TAIL, len(lines))} lines:\n{tail}"
    )


def log_sizes(root: Path) -> dict[Path, int]:
    """The size of every `*.log` file under `root` (symlinked directories not followed)."""
    sizes = {}
    for path in root.rglob("*.log"):
        try:
            if path.is_file():
                sizes[path] = path.stat().st_size
        except OSError:
            continue  # gone meanwhile
    return sizes


def grown(before: dict[Path, int], now: dict[Path, int]) -> list[tuple[Path, int]]:
    """Each log that grew or appeared since `before`, with where it stood then."""
    return sorted(
        (path, before.get(path, 0)) for path, size in now.items() if size > before.get(path, 0)
    )


def summaries(logs: Iterable[tuple[Path, int]]) -> list[tuple[str, str]]:
    """Report sections for (log, start) pairs; a log that cannot be read says why,
    and never fails the session."""
    sections = []
    for path, start in logs:
        try:
            text = summary(path, start)
        except Exception as error:  # the report must not be lost to its evidence
            text = f"{path}: could not be read: {type(error).__name__}: {error}"
        sections.append((f"log {path.name}", text))
    return sections
