"""The summary of a process log that a failed test's report carries (tests.support.evidence)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import evidence
from tests.support.evidence import TAIL, grown, log_sizes, summaries, summary


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


def test_only_what_was_written_since_start_and_at_most_the_last_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "moto.log"
    log.write_text("earlier test\n" * 5)
    start = log.stat().st_size
    with log.open("a") as more:
        more.write("this test\n" * 3)
    assert "3 x this test" in summary(log, start)
    assert "earlier test" not in summary(log, start)

    # The last 45 bytes: the end of one line, dropped, then four whole ones.
    monkeypatch.setattr(evidence, "MAX_BYTES", 45)
    text = summary(log, 0)
    assert "3 x this test" in text
    assert "1 x earlier test" in text
    assert "(4 lines, its last" in text


def test_the_logs_that_grew_with_where_they_stood(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "moto.log").write_text("before\n")
    (tmp_path / "a" / "quiet.log").write_text("before\n")
    (tmp_path / "a" / "notes.txt").write_text("not a log")
    (tmp_path / "a" / "cache.log").mkdir()
    before = log_sizes(tmp_path)
    assert set(before) == {tmp_path / "a" / "moto.log", tmp_path / "a" / "quiet.log"}

    with (tmp_path / "a" / "moto.log").open("a") as moto:
        moto.write("during\n")
    (tmp_path / "b.log").write_text("new\n")

    assert grown(before, log_sizes(tmp_path)) == [
        (tmp_path / "a" / "moto.log", 7),
        (tmp_path / "b.log", 0),
    ]


def test_a_log_that_cannot_be_read_says_so(tmp_path: Path) -> None:
    (tmp_path / "ok.log").write_text("fine\n")
    sections = summaries([(tmp_path / "gone.log", 0), (tmp_path / "ok.log", 0)])
    assert sections[0][0] == "log gone.log"
    assert "could not be read: FileNotFoundError" in sections[0][1]
    assert "1 x fine" in sections[1][1]


def test_a_failed_test_report_carries_its_logs_and_the_session_goes_on(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        "from tests.conftest import pytest_runtest_makereport, session_temp  # noqa: F401"
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        test_inner="""
        import json

        import pytest

        @pytest.fixture(scope="module")
        def module_server(tmp_path_factory):
            log = tmp_path_factory.mktemp("module") / "server.log"
            log.write_text("started\\n")
            return log

        def test_passes_with_its_own_log(tmp_path, module_server):
            (tmp_path / "quiet.log").write_text("nothing to see")
            with module_server.open("a") as log:
                log.write("an earlier test's line\\n")

        def test_fails(tmp_path, module_server):
            line = {"log_level": "ERROR", "logger": "clients.aws", "message": "boom"}
            (tmp_path / "service.log").write_text((json.dumps(line) + "\\n") * 7)
            (tmp_path / "odd.log").mkdir()
            with module_server.open("a") as log:
                log.write("this test's line\\n")
            assert False

        def test_passes():
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(
        [
            "*- log server.log -*",
            "*1 x this test's line*",
            "*- log service.log -*",
            "*7 x ERROR clients.aws boom*",
        ]
    )
    output = result.stdout.str()
    assert "quiet.log" not in output  # an earlier test's log, unchanged since
    assert "an earlier test's line" not in output
