"""The summary of a process log that a failed test's report carries (tests.support.evidence)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.evidence import TAIL, process_logs, summary


def json_line(message: str, **fields: str) -> str:
    return json.dumps(
        {"log_level": "WARNING", "logger": "clients.aws", "message": message, **fields}
    )


def test_the_most_frequent_messages_come_first_with_their_counts(tmp_path: Path) -> None:
    log = tmp_path / "accounts.log"
    lines = [
        json_line("call failed", error_code="CIRCUIT_OPEN", timestamp=str(n)) for n in range(40)
    ]
    lines += [json_line("breaker opened", timestamp="x")] * 3
    lines += [
        '127.0.0.1 - - [06/Dec/2026 05:51:24] "POST / HTTP/1.1" 500 -',
        '127.0.0.1 - - [06/Dec/2026 05:51:25] "POST / HTTP/1.1" 500 -',
        "not json at all",
    ]
    log.write_text("\n".join(lines) + "\n\n")

    text = summary(log)

    most_frequent = text.split("most frequent:\n")[1].split("\nlast")[0].splitlines()
    assert most_frequent[0] == "     40 x WARNING clients.aws call failed CIRCUIT_OPEN"
    assert most_frequent[1] == "      3 x WARNING clients.aws breaker opened"
    assert '      2 x 127.0.0.1 - - [] "POST / HTTP/1.1" 500 -' in most_frequent
    assert f"({len(lines)} lines)" in text
    tail = text.split(f"last {TAIL} lines:\n")[1].splitlines()
    assert tail == lines[-TAIL:]


def test_logs_are_found_under_the_directories_then_the_files_that_exist(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "t.log").write_text("x")
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "moto.log").write_text("x")

    found = process_logs([tmp_path / "a"], [tmp_path / "moto.log", tmp_path / "gone.log"])

    assert found == [tmp_path / "a" / "t.log", tmp_path / "moto.log"]
